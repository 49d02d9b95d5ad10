"""Ranks on MDS latents, each its own process started with torchrun's variables (as torchrun, submitit and srun all
leave them after distributed.export_layout): two ranks of microbatch m see the samples one rank of 2m with
accumulation sees, in the same order, end with its weights, and resume mid-epoch exactly."""
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import microdit.train.trainer as trainer_module
from microdit.train.config import save_stage_config
from microdit.train.distributed import init_distributed, shutdown_distributed
from microdit.train.trainer import Trainer
from train_helpers import numbered_latents, tiny_config, weights

SAMPLES = 48  # 12 steps of 4 per epoch: every interruption below is mid-epoch


class Killed(Exception):
    pass


def train_rank(rank: int, world: int, port: int, config: dict, kill_after: int | None, out: str) -> None:
    """One rank's process: train, recording the sample numbers of each microbatch the loss sees."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tempfile.tempdir = os.path.join(os.path.dirname(out), "streaming_locks")
    torch.set_num_threads(1)
    seen, loss = [], trainer_module.denoising_loss

    def recording(model, batch, *args):
        if batch["latents"].dtype == torch.float16:  # the loader's (the FLOP count's example batch is float32)
            seen.append([int(v) for v in batch["latents"][:, 0, 0, 0].tolist()])
        return loss(model, batch, *args)

    def kill(ctx):
        if ctx.step == kill_after:
            raise Killed

    trainer_module.denoising_loss = recording
    try:
        Trainer(tiny_config(**config), init_distributed(), callbacks=[kill]).run()
    except Killed:
        pass
    finally:
        shutdown_distributed()
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump(seen, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, out_dir, kill_after: int | None = None, **changes) -> list[list[list[int]]]:
    """Each rank's microbatches, as the sample numbers they held."""
    out = str(out_dir / "seen")
    (out_dir / "streaming_locks").mkdir(parents=True, exist_ok=True)
    config = {"out_dir": str(out_dir), **changes}
    mp.start_processes(train_rank, args=(world, free_port(), config, kill_after, out), nprocs=world,
                       start_method="spawn")
    return [json.load(open(f"{out}.rank{rank}.json")) for rank in range(world)]


def stage(datadir: str, strategy: str) -> dict:
    data = {"kind": "mds", "options": {"datadirs": [datadir], "resolution": 64, "num_workers": 0}}
    return dict(data=data, steps=6, save_every=2, strategy=strategy, ema={"decay": 0.8, "start_step": 2},
                launch={"cpus_per_task": 1})


@pytest.mark.slow
def test_two_ranks_take_the_global_batches_of_one_rank_with_accumulation(tmp_path):
    settings = stage(numbered_latents(tmp_path / "latents", SAMPLES), "ddp")
    (one,) = run_ranks(1, tmp_path / "one", **settings)
    two = run_ranks(2, tmp_path / "two", **settings)
    # one rank's microbatch k of a step is the one of rank k in two (microbatch index k * world + rank)
    assert len(one) == 12 and [mb for pair in zip(*two) for mb in pair] == one
    assert sorted(sum(one, [])) == sorted(set(sum(one, [])))  # within an epoch, no sample twice
    for name in ("final.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "one" / name), weights(tmp_path / "two" / name)
        assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), name


@pytest.mark.slow
def test_two_ranks_resume_mid_epoch_exactly(tmp_path):
    settings = stage(numbered_latents(tmp_path / "latents", SAMPLES), "fsdp")
    straight = run_ranks(2, tmp_path / "straight", **settings)
    before = run_ranks(2, tmp_path / "resumed", kill_after=5, **settings)  # newest checkpoint: step 4
    after = run_ranks(2, tmp_path / "resumed", **settings)
    for rank in range(2):
        assert before[rank] == straight[rank][:5] and after[rank] == straight[rank][4:]
    for name in ("final.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "straight" / name), weights(tmp_path / "resumed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.slow
def test_torchrun_starts_a_stage_through_the_entry_point(tmp_path):
    """Each process torchrun starts runs its rank in place (`cluster: debug`); rank 0 holds the folder's lock."""
    settings = stage(numbered_latents(tmp_path / "latents", SAMPLES), "fsdp")
    settings["launch"]["cluster"] = "debug"
    save_stage_config(tiny_config(tmp_path / "stage", **settings), tmp_path / "stage.yaml")
    bin_dir = Path(sys.executable).parent
    run = subprocess.run([str(bin_dir / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()),
                          str(bin_dir / "microdit"), "train", "--config", str(tmp_path / "stage.yaml")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads((tmp_path / "stage" / "train_stats.json").read_text())
    assert (stats["world_size"], stats["global_step"]) == (2, 6)
