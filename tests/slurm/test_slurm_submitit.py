"""submitit against a real SLURM (tests/slurm/cluster.sh); skipped unless MICRODIT_SLURM=1.

These check the three things the training stage relies on: multi-task jobs return every rank, a Python exception
in a job comes back through submitit, and a job killed from outside (scancel) is noticed via `sacct` instead of
hanging forever (which is what happens without slurmdbd accounting).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest


PARTITION = os.environ.get("MICRODIT_SLURM_PARTITION", "debug")


@pytest.fixture()
def executor(tmp_path):
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    # The job's Python can't import this test module (pytest put tests/slurm on sys.path, the job doesn't), so ship
    # the functions below by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    assert ex.cluster == "slurm"
    # timeout_min must exceed submitit's USR2 warning (signal_delay_s=90) plus slurmctld's 30 s check period:
    # with timeout_min=2, slurmctld may send the "about to time out" USR2 as soon as the job starts.
    ex.update_parameters(slurm_partition=PARTITION, nodes=1, tasks_per_node=1, cpus_per_task=1, mem_gb=0.5,
                         timeout_min=5)
    yield ex
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _whoami(tag: str) -> dict:
    import socket

    import submitit

    env = submitit.JobEnvironment()
    return {"tag": tag, "rank": env.global_rank, "world": env.num_tasks, "host": socket.gethostname(),
            "partition": os.environ.get("SLURM_JOB_PARTITION")}


def _boom(message: str) -> None:
    raise ValueError(message)


def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "should not get here"


def _wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s}s")
        time.sleep(0.5)


def test_two_tasks_return_both_ranks(executor):
    executor.update_parameters(tasks_per_node=2)
    job = executor.submit(_whoami, "hello")
    # results(), not result(): a multi-task job has one result per task.
    results = job.results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["world"] == 2 and r["tag"] == "hello" for r in results)
    assert {r["partition"] for r in results} == {PARTITION}


def test_exception_in_job_surfaces(executor):
    import submitit

    job = executor.submit(_boom, "boom-from-slurm-job")
    with pytest.raises(submitit.core.utils.FailedJobError, match="boom-from-slurm-job"):
        job.result()
    assert "ValueError" in str(job.exception())


def test_scancel_is_noticed(executor, monkeypatch):
    import submitit

    job = executor.submit(_sleep, 120)
    # Force a fresh sacct call while waiting to start: job.state alone follows submitit's back-off (up to ~16 s).
    _wait_until(lambda: job.get_info(mode="force").get("State") == "RUNNING", 20, f"job {job.job_id} running")
    t0 = time.monotonic()
    # Cancel from outside, as an admin or a time limit would: only sacct can tell submitit what happened.
    subprocess.run(["scancel", str(job.job_id)], check=True, timeout=30)
    # done() with the default polling schedule (no force_check), i.e. exactly what job.result() waits on.
    _wait_until(job.done, 20, f"cancelled job {job.job_id} noticed as done")
    print(f"cancel noticed after {time.monotonic() - t0:.1f}s")
    assert job.state.startswith("CANCELLED"), job.state
    # A cancelled job has no result file; submitit waits _results_timeout_s (15 s, meant for slow shared file
    # systems) for one before giving up. The scratch dir is local, so a short grace keeps the test quick.
    monkeypatch.setattr(type(job), "_results_timeout_s", 2)
    assert isinstance(job.exception(), submitit.core.utils.UncompletedJobError)
