"""A CPU-sized stage config for the training tests: MicroDiT_Nano_2 cut to 3 blocks (MoE kept) on 8x8 latents."""
import copy

import numpy as np
from safetensors.torch import load_file

from microdit.train.config import stage_config_from_dict

BASE = {
    "name": "test", "steps": 4, "global_batch": 4, "micro_batch": 2, "seed": 7, "precision": "fp32",
    "log_every": 1, "save_every": 2, "keep_checkpoints": 2, "progress": False,
    "model": {"arch": "MicroDiT_Nano_2", "latent_res": 8, "caption_channels": 32, "train_mask_ratio": 0.5,
              "overrides": {"depth": 3, "patch_mixer_depth": 2}},
    "data": {"kind": "random", "caption_len": 4, "cap_drop_prob": 0.25},
    "optim": {"lr": 1e-3, "grad_clip": 0.5},
    "schedule": {"kind": "cosine_warmup", "warmup_steps": 2, "alpha_f": 0.33},
    "launch": {"cluster": "debug"},
}


class Killed(Exception):
    """Raised by kill_after's callback: a run that dies after a step, its checkpoints as they were then."""


def kill_after(step):
    def callback(ctx):
        if ctx.step == step:
            raise Killed
    return callback


def merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_config(out_dir, **changes):
    return stage_config_from_dict(merge({**BASE, "out_dir": str(out_dir)}, changes))


def weights(path) -> dict:
    return load_file(str(path))


def heldout_shards(path, column="latents_64", samples=10) -> str:
    """Random held-out latents in precompute's layout for the test model (caption 1x4x32, latents 4x8x8)."""
    from streaming import MDSWriter

    rng = np.random.default_rng(0)
    columns = {"caption_latents": "ndarray:float16:1,4,32", column: "ndarray:float16:4,8,8"}
    with MDSWriter(out=str(path), columns=columns, compression=None) as writer:
        for _ in range(samples):
            writer.write({"caption_latents": rng.standard_normal((1, 4, 32)).astype(np.float16),
                          column: rng.standard_normal((4, 8, 8)).astype(np.float16)})
    return str(path)


def validation(datadir, **changes) -> dict:
    return {"every": 2, "datadirs": [datadir], "resolution": 64, "num": 8, "batch_size": 3, "seed": 5, **changes}


def numbered_latents(path, samples: int) -> str:
    """Latents in precompute's layout for the test model whose first value is the sample's number, so that a test
    can tell which samples a batch holds; the rest is noise, so that the weights depend on which ones."""
    from streaming import MDSWriter

    rng = np.random.default_rng(1)
    columns = {"caption_latents": "ndarray:float16:1,4,32", "latents_64": "ndarray:float16:4,8,8"}
    with MDSWriter(out=str(path), columns=columns, compression=None) as writer:
        for i in range(samples):
            latents = rng.standard_normal((4, 8, 8)).astype(np.float16)
            latents[0, 0, 0] = i
            writer.write({"caption_latents": rng.standard_normal((1, 4, 32)).astype(np.float16),
                          "latents_64": latents})
    return str(path)


def wait_until(predicate, what: str, timeout_s: float = 120) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout_s` (a hang fails, it does not block)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.2)
