"""AdamW over the denoiser with the MoE layers in their own parameter group at half the learning rate.

The reference selected "MoE parameters" by the substring 'moe' in their names, which no parameter has (the layers are
called `mlp`), so its lr halving never happened (SPEC §7.1). Here the MoE layers are found by type, and
`optim.moe_half_lr` (on by default) switches the halving on; off reproduces what the reference actually trained.
"""
import math

import torch
import torch.nn as nn

from microdit.models.layers import ExpertChoiceMoE
from microdit.train.config import OptimConfig

MOE_LR_SCALE = 0.5


def param_groups(model: nn.Module, moe_half_lr: bool) -> list[dict]:
    """Groups carry `lr_scale`, the multiple of the scheduled lr they train at."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not moe_half_lr:
        return [{"params": params, "lr_scale": 1.0, "name": "all"}]
    # every parameter inside an ExpertChoiceMoE layer: the experts' w1, w2 and the router gate
    moe = {id(p) for module in model.modules() if isinstance(module, ExpertChoiceMoE) for p in module.parameters()}
    groups = [{"params": [p for p in params if id(p) not in moe], "lr_scale": 1.0, "name": "dense"},
              {"params": [p for p in params if id(p) in moe], "lr_scale": MOE_LR_SCALE, "name": "moe"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, cfg.moe_half_lr), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=on_cuda or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


def apply_gradients(model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> torch.Tensor:
    """Clip the global gradient norm to `grad_clip` (0: no clipping), step and clear the gradients; returns the
    norm before clipping (a DTensor under FSDP)."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
