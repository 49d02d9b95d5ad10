"""A training stage on the real SLURM (tests/slurm/cluster.sh) outlives its driver and its requeues, and spans two
nodes; skipped unless MICRODIT_SLURM=1. Every stage here runs as the paper's do, its tasks sharded by FSDP2 on MDS
latents, and ends with the weights of a run that was never interrupted (the same 2 tasks as local processes).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))  # the training tests' stage config and latents (not a package)
from train_helpers import numbered_latents, tiny_config, wait_until, weights  # noqa: E402

from microdit.train.config import save_stage_config  # noqa: E402

BIN = Path(sys.executable).parent
PARTITION = os.environ.get("MICRODIT_SLURM_PARTITION", "debug")
TOPOLOGY = {"tasks_per_node": 2, "cpus_per_task": 1, "timeout_min": 10}


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=60).stdout


def same_weights(a: Path, b: Path) -> None:
    for name in ("final.safetensors", "ema.safetensors")[:2 if (a / "ema.safetensors").exists() else 1]:
        x, y = weights(a / name), weights(b / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def completed(job_id: str) -> None:
    """The result comes back before the job's epilogue ends: wait for SLURM's own word."""
    wait_until(lambda: slurm("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State").split() == ["COMPLETED"],
               f"job {job_id} COMPLETED in sacct", 60)


def start_without_requeue_delay(job_id: str) -> None:
    """SLURM holds a requeued job back for its credential lifetime (cred_expire, 121 s by default): start it now."""
    wait_until(lambda: "JobState=PENDING" in slurm("scontrol", "show", "job", job_id), "the requeued job pending", 60)
    slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def first_checkpoint(stage: Path, timeout_s: float) -> None:
    """Wait for the stage's first checkpoint; a timeout says where the job stood (queue, accounting, its logs)."""
    try:
        wait_until(lambda: any((stage / "checkpoints").glob("step_*.pt")), f"{stage.name}'s first checkpoint",
                   timeout_s)
    except AssertionError as timeout:
        queue = subprocess.run(["squeue", "-a", "-o", "%i %T %R %M"], capture_output=True, text=True).stdout
        accounting = subprocess.run(["sacct", "-a", "-X", "-S", "now-15minutes", "-o",
                                     "JobID,JobName%30,State,Elapsed,NodeList"],
                                    capture_output=True, text=True).stdout
        logs = "".join(f"--- {log}\n{log.read_text()[-2000:]}\n" for log in sorted(stage.glob("submitit/*/*_log.*")))
        raise AssertionError(f"{timeout}\nsqueue:\n{queue}\nsacct:\n{accounting}\n{logs}") from None


def mds_stage(tmp_path, **changes) -> dict:
    # streaming's sample order follows its canonical node count, the node count by default: pinned, it is the same
    # on one node and on two
    return dict(strategy="fsdp", ema={"decay": 0.9, "start_step": 1},
                data={"kind": "mds", "options": {"datadirs": [numbered_latents(tmp_path / "latents", 48)],
                                                 "resolution": 64, "num_workers": 0, "num_canonical_nodes": 2}},
                **changes)


def test_a_two_node_stage_meets_on_its_first_node_and_trains_as_one(tmp_path):
    from microdit.train.launch import launch

    settings = mds_stage(tmp_path, steps=6)
    nodes = tiny_config(tmp_path / "nodes", launch={"cluster": "slurm", "partition": PARTITION, **TOPOLOGY,
                                                    "nodes": 2, "tasks_per_node": 1}, **settings)
    assert launch(nodes) == 0
    (job_id,) = [p.name for p in (tmp_path / "nodes" / "submitit").iterdir() if p.name.isdigit()]
    completed(job_id)
    assert len(slurm("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "NodeList").strip().split(",")) == 2
    rank_1 = (tmp_path / "nodes" / "submitit" / job_id / f"{job_id}_1_log.out").read_text()
    assert "node=1(2), global_rank=1(2)" in rank_1
    assert launch(tiny_config(tmp_path / "local", launch={"cluster": "local", **TOPOLOGY}, **settings)) == 0
    same_weights(tmp_path / "nodes", tmp_path / "local")


def test_the_users_own_srun_runs_a_stage_rank_by_rank_in_place(tmp_path):
    settings = mds_stage(tmp_path, steps=6)
    save_stage_config(tiny_config(tmp_path / "stage", launch={"cluster": "debug", **TOPOLOGY}, **settings),
                      tmp_path / "stage.yaml")
    run = subprocess.run(["srun", "--nodes", "1", "--ntasks", "2", "--cpus-per-task", "1", "--mem", "2G",
                          "--partition", PARTITION, str(BIN / "microdit"), "train", "--config",
                          str(tmp_path / "stage.yaml")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads((tmp_path / "stage" / "train_stats.json").read_text())
    assert (stats["world_size"], stats["global_step"]) == (2, 6)


def test_a_requeued_job_resumes_and_ends_with_the_uninterrupted_weights(tmp_path):
    settings = mds_stage(tmp_path, steps=120, save_every=10)
    from microdit.train.launch import launch

    save_stage_config(tiny_config(tmp_path / "requeued", launch={"cluster": "slurm", "partition": PARTITION,
                                                                 **TOPOLOGY}, **settings), tmp_path / "stage.yaml")
    driver = subprocess.Popen([str(BIN / "microdit"), "train", "--config", str(tmp_path / "stage.yaml")],
                              stderr=subprocess.PIPE, text=True)
    first_checkpoint(tmp_path / "requeued", 300)
    job_id = json.loads((tmp_path / "requeued" / "job.json").read_text())["job_id"]
    slurm("scontrol", "requeue", job_id)
    start_without_requeue_delay(job_id)
    err = driver.communicate(timeout=300)[1]
    assert driver.returncode == 0, err

    assert "Restarts=1" in slurm("scontrol", "show", "job", job_id)
    completed(job_id)
    log = (tmp_path / "requeued" / "submitit" / job_id / f"{job_id}_0_log.err").read_text()
    resumed = re.search(r"resumes \S+/step_(\d+)\.pt at step (\d+)", log)
    assert resumed and 10 <= int(resumed[2]) < 120, log

    straight = tiny_config(tmp_path / "straight", launch={"cluster": "local", **TOPOLOGY}, **settings)
    assert launch(straight) == 0
    same_weights(tmp_path / "requeued", tmp_path / "straight")


def test_a_killed_snakemake_driver_is_followed_by_one_that_waits_on_the_same_job(tmp_path):
    run = "tiny-slurm-driver"
    shutil.rmtree(REPO / "results" / run, ignore_errors=True)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"run": run, "stages": {"stage1": {"set": {
        "steps": 120, "save_every": 10, "progress": False, "strategy": "fsdp", "micro_batch": 4}}}}))
    command = [str(BIN / "snakemake"), "stage1", "--profile", "profiles/slurm", "--configfile", "config/tiny.yaml",
               "tests/slurm/tiny_on_slurm.yaml", str(overlay)]
    stage = REPO / "results" / run / "train" / "stage1"
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first_checkpoint(stage, 600)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver's whole tree, as a dropped ssh session takes it down
        first.wait()
    job_id = json.loads((stage / "job.json").read_text())["job_id"]
    assert slurm("squeue", "-h", "-j", job_id, "-o", "%T").strip() == "RUNNING"

    # a killed Snakemake leaves its own lock behind, which unlock-stale removes; then the same command
    subprocess.run([str(BIN / "microdit"), "unlock-stale", "--snakemake", command[0], "--", *command[1:]], cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    driver_log = (REPO / "results" / run / "logs" / "train" / "stage1.log").read_text()
    assert f"reattached to slurm job {job_id}" in driver_log, driver_log

    name = yaml.safe_load((stage / "stage.yaml").read_text())["name"]
    completed(job_id)
    jobs = slurm("sacct", "-n", "-X", "-P", "-S", started, "--name", name, "-o", "JobID,State").split()
    assert jobs == [f"{job_id}|COMPLETED"]
    straight = subprocess.run([str(BIN / "microdit"), "train", "--config", str(stage / "stage.yaml"), "--out",
                               str(tmp_path / "straight"), "--set", "launch.cluster=local"],
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-4000:]
    same_weights(stage, tmp_path / "straight")
    shutil.rmtree(REPO / "results" / run)
