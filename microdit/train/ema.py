"""Exponential moving average of the denoiser's parameters (stages 3-4; the reference configured it but never ran it,
SPEC §7.2).

Before `start_step` the average simply follows the weights, so it starts from the weights of that step rather than from
the random init. The shadow tensors have the parameters' own layout (sharded under FSDP), so updates stay local.
"""
import contextlib

import torch
import torch.nn as nn

from microdit.train.config import EMAConfig
from microdit.train.distributed import full_tensor, shard_like


class EMA:
    def __init__(self, model: nn.Module, cfg: EMAConfig):
        self.cfg = cfg
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone().float() for _, p in self._params(model)]

    def _params(self, model: nn.Module):
        params = dict(model.named_parameters())
        return [(name, params[name]) for name in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after the optimizer step that produced global step `step`."""
        # per tensor, not torch._foreach_*: FSDP's sharded DTensors have no foreach copy
        for shadow, (_, param) in zip(self.shadow, self._params(model)):
            if step <= self.cfg.start_step:
                shadow.copy_(param.detach())
            elif step % self.cfg.every == 0:
                shadow.lerp_(param.detach().float(), 1.0 - self.cfg.decay)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module):
        """Inside the block the model holds the averaged weights, after it its own again; in place, so sharded
        parameters stay sharded and compiled blocks keep their graphs (every rank swaps its own shards)."""
        params = [param for _, param in self._params(model)]
        with torch.no_grad():
            kept = [param.detach().clone() for param in params]
            for param, shadow in zip(params, self.shadow):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, own in zip(params, kept):
                    param.copy_(own)

    def state_dict(self) -> dict:
        """Whole tensors on CPU (a collective under FSDP: call on every rank)."""
        return {name: full_tensor(t).cpu() for name, t in zip(self.names, self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for name, tensor in zip(self.names, self.shadow):
            tensor.copy_(shard_like(state[name], tensor))
