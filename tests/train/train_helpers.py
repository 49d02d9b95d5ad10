"""A CPU-sized stage config for the training tests: MicroDiT_Nano_2 cut to 3 blocks (MoE kept) on 8x8 latents."""
import copy

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
