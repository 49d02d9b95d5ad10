"""One job per stage folder on submitit's local cluster: a driver that was stopped or killed is followed by one that
waits on the same job (or collects it, or resumes a job that died unwatched in a new one); two drivers never share a
folder. The same on the real SLURM: tests/slurm/test_slurm_stage_driver.py."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microdit.train.config import save_stage_config
from microdit.train.launch import launch, submit
from microdit.train.stage_job import RECORD_FILE, DetachedLocalJob, StageBusy, driver_lock
from train_helpers import tiny_config, wait_until, weights

LOCAL = {"cluster": "local", "cpus_per_task": 1, "timeout_min": 10}


def stage(out_dir, steps: int = 4, **launch_settings):
    return tiny_config(out_dir, steps=steps, launch={**LOCAL, **launch_settings})


def job_folders(out_dir) -> list[str]:
    return sorted(p.name for p in (Path(out_dir) / "submitit").iterdir() if p.name != "%j")


def test_a_second_driver_of_a_stage_folder_names_the_first_and_submits_nothing(tmp_path):
    cfg = stage(tmp_path)
    with driver_lock(tmp_path):
        with pytest.raises(StageBusy, match=rf"already driven by pid {os.getpid()} on .*driver.lock"):
            launch(cfg)
    assert not (tmp_path / "submitit").exists()


@pytest.mark.slow
def test_a_job_whose_driver_died_is_waited_on_or_collected_not_submitted_again(tmp_path, capsys):
    running = stage(tmp_path / "running")
    first = submit(running, "auto")  # its driver dies here, before it waits
    assert launch(running) == 0
    err = capsys.readouterr().err
    assert f"reattached to local job {first.job_id} of stage 'test'" in err
    assert job_folders(tmp_path / "running") == [first.job_id] and not (tmp_path / "running" / RECORD_FILE).exists()

    ended = stage(tmp_path / "ended")
    job = submit(ended, "auto")
    job._process.wait()  # its controller ended
    assert launch(ended) == 0
    assert f"local job {job.job_id} of stage 'test' ended while no driver watched; collecting it" in \
        capsys.readouterr().err
    assert job_folders(tmp_path / "ended") == [job.job_id]
    a, b = weights(tmp_path / "running" / "final.safetensors"), weights(tmp_path / "ended" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_job_that_died_unwatched_is_resumed_by_a_new_one(tmp_path, capsys):
    cfg = stage(tmp_path, steps=30)
    job = submit(cfg, "none")
    wait_until(lambda: (tmp_path / "checkpoints" / "step_000000004.pt").exists(), "step 4's checkpoint")
    job.cancel()  # SIGINT to its controller, which stops its task
    job._process.wait()
    assert launch(cfg) == 0
    err = capsys.readouterr().err
    assert f"local job {job.job_id} of stage 'test' ended without a result while no driver watched" in err
    folders = job_folders(tmp_path)
    assert len(folders) == 2 and job.job_id in folders
    assert json.loads((tmp_path / "train_stats.json").read_text())["global_step"] == 30
    # the new job went on from the newest checkpoint of the first, which had reached at least step 4
    (new,) = set(folders) - {job.job_id}
    log = (tmp_path / "submitit" / new / f"{new}_0_log.err").read_text()
    resumed = re.search(r"test: resumes \S+/step_(\d+).pt at step (\d+)", log)
    assert resumed and int(resumed[1]) == int(resumed[2]) >= 4, log


def driver(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([Path(sys.executable).with_name("microdit"), "train", "--config", str(config), *args],
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("cancel", [False, True])
def test_a_stopped_driver_leaves_its_job_running_or_cancels_it(tmp_path, cancel):
    cfg = stage(tmp_path / "stage", steps=60)
    save_stage_config(cfg, tmp_path / "stage.yaml")
    first = driver(tmp_path / "stage.yaml", *(["--cancel-on-exit"] if cancel else []))
    wait_until(lambda: (tmp_path / "stage" / RECORD_FILE).exists(), "the job record")
    first.send_signal(signal.SIGTERM)
    err = first.communicate(timeout=60)[1]
    assert first.returncode == 128 + signal.SIGTERM, err
    (job_id,) = job_folders(tmp_path / "stage")
    if cancel:
        assert f"stopped by SIGTERM; job {job_id} cancelled (launch.cancel_on_exit)" in err
        cancelled = DetachedLocalJob(tmp_path / "stage" / "submitit" / "%j", job_id)
        wait_until(lambda: cancelled.get_info()["jobState"] != "RUNNING", "the cancel")
        assert not (tmp_path / "stage" / RECORD_FILE).exists()
        return
    assert f"goes on as local job {job_id}" in err and f"`kill -INT {job_id}` cancels it" in err
    second = driver(tmp_path / "stage.yaml")
    err = second.communicate(timeout=300)[1]
    # the job ran on: the next driver finds it running or finished (test_a_job_whose_driver_died... has both)
    assert second.returncode == 0, err
    assert f"reattached to local job {job_id}" in err or f"local job {job_id} of stage 'test' ended while" in err
    assert job_folders(tmp_path / "stage") == [job_id] and (tmp_path / "stage" / "final.safetensors").exists()
