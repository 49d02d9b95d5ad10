"""submitit launch: a 2-task `local` job over gloo trains the nano model on MDS latents, writes the stage outputs, and
matches one process on the same global batch (the data and noise of a step do not depend on how many ranks share
it)."""
import gc
import json
import tempfile

import pytest
import torch

from microdit.train import commands
from microdit.train.distributed import DistInfo
from microdit.train.launch import executor_parameters, failure_reason, launch
from microdit.train.trainer import Trainer
from train_helpers import heldout_shards, numbered_latents, tiny_config, validation, weights


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_local_two_tasks_match_one_process(tmp_path, monkeypatch, strategy):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # streaming's locks, here and in the job's processes
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    data = {"kind": "mds", "options": {"datadirs": [numbered_latents(tmp_path / "latents", 24)], "resolution": 64,
                                       "num_workers": 0}}
    changes = dict(steps=3, save_every=3, ema={"decay": 0.9, "start_step": 1}, data=data,
                   validation=validation(heldout_shards(tmp_path / "held_out")))
    two = tiny_config(tmp_path / "two", strategy=strategy,
                      launch={"cluster": "local", "tasks_per_node": 2, "cpus_per_task": 1}, **changes)
    assert launch(two) == 0
    stats = json.loads((tmp_path / "two" / "train_stats.json").read_text())
    assert (stats["world_size"], stats["global_step"], stats["images_seen"]) == (2, 3, 12)

    one = Trainer(tiny_config(tmp_path / "one", **changes), DistInfo())
    assert one.accumulation == 2
    one.run()
    gc.collect()  # streaming refuses a second live dataset on the same shards
    for name in ("final.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "one" / name), weights(tmp_path / "two" / name)
        assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), name
    # the held-out loss, each rank scoring half of the samples, is the one process's
    held_out = [[line[key] for line in map(json.loads, (tmp_path / run / "metrics.jsonl").open()) if "val_loss" in line
                 for key in ("val_loss", "val_loss_ema")] for run in ("one", "two")]
    assert len(held_out[0]) == 4 and held_out[1] == pytest.approx(held_out[0], rel=1e-4)  # EMA swapped in per shard


@pytest.mark.slow
def test_failed_job_returns_1_with_log_path(tmp_path, capsys):
    cfg = tiny_config(tmp_path, launch={"cluster": "local"}, data={"kind": "mds"})
    assert launch(cfg) == 1
    err = capsys.readouterr().err
    assert "failed (" in err and "log: " in err and str(tmp_path / "submitit") in err


def test_missing_previous_stage_fails_before_submitting(tmp_path):
    cfg = tiny_config(tmp_path / "s2", init={"from": str(tmp_path / "s1"), "mode": "full"})
    with pytest.raises(Exception, match="no such file or directory"):
        launch(cfg)
    assert not (tmp_path / "s2" / "submitit").exists()


def test_slurm_parameters():
    cfg = tiny_config("runs/x", launch={"cluster": "slurm", "nodes": 2, "gpus_per_node": 8, "tasks_per_node": 8,
                                        "partition": "gpu", "account": "proj", "qos": "high", "mem_gb": 400,
                                        "constraint": "h100", "timeout_min": 600,
                                        "sbatch_extra": ["--exclusive", "--mail-type=END"]})
    params = executor_parameters(cfg)
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "proj" and params["mem_gb"] == 400
    assert (params["nodes"], params["gpus_per_node"], params["tasks_per_node"]) == (2, 8, 8)
    assert params["slurm_additional_parameters"] == {"exclusive": True, "mail-type": "END"}


def test_a_task_keeps_its_threads_and_the_compilers_build_pool_to_its_cpus(tmp_path, monkeypatch):
    """A task that its cluster does not bind to its CPUs sees the whole node; a compiling task's kernel-build pool
    is sized by what the task was allotted (a task that compiles nothing leaves the compiler unimported)."""
    import torch._inductor.config as inductor_config

    import microdit.train.trainer as trainer_module
    from microdit.train.config import to_dict
    from microdit.train.launch import TrainJob

    seen = {}

    class Recorder:
        def __init__(self, cfg, info, resume, callbacks):
            seen[cfg.compile] = {"threads": torch.get_num_threads(), "builds": inductor_config.compile_threads}

        def run(self) -> dict:
            return {}

    monkeypatch.setattr(trainer_module, "Trainer", Recorder)
    threads = torch.get_num_threads()
    try:
        with inductor_config.patch(compile_threads=32):
            for compile_mode in ("none", "blocks"):
                config = tiny_config(tmp_path / compile_mode, compile=compile_mode, launch={"cpus_per_task": 1})
                TrainJob(to_dict(config), resume="none")()
    finally:
        torch.set_num_threads(threads)
    assert seen == {"none": {"threads": 1, "builds": 32}, "blocks": {"threads": 1, "builds": 1}}


def test_failure_reason_is_the_exception_line():
    text = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call "
            "last):\n  File x\nValueError: boom\n\n----------------------\nYou can check full logs at:\n - a.err\n")
    assert failure_reason(text) == "ValueError: boom"


def test_a_job_that_died_without_its_result_is_reported_by_its_cause():
    """A full disk kills the job and keeps submitit from writing its result: the cause is in the error stream."""
    text = ("Job 7 (task: 0) with path /x/7_0_result.pkl\nhas not produced any output (state: FAILED)\nError stream "
            "produced:\n----------------------------------------\nsubmitit WARNING - Bypassing signal SIGTERM\n"
            "[rank0]: Traceback (most recent call last):\n[rank0]:   File x\n[rank0]: OSError: [Errno 28] No space "
            "left on device: '/x/checkpoints/.step_000000010.pt.tmp'\nsrun: error: vm: task 0: Exited with exit code 1\n")
    assert failure_reason(text) == ("[rank0]: OSError: [Errno 28] No space left on device: "
                                    "'/x/checkpoints/.step_000000010.pt.tmp'; it left no result")
    assert failure_reason(text.replace("OSError", "Killed by signal 9")).startswith("Job 7 (task: 0)")


def test_train_command_parses(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "c.yaml", "--resume", "none", "--out", str(tmp_path),
                              "--set", "optim.lr=1e-4", "--set", "launch.cluster=debug"])
    assert (args.resume, args.out, args.overrides, args.func) == ("none", str(tmp_path),
                                                                  ["optim.lr=1e-4", "launch.cluster=debug"],
                                                                  commands.run)
