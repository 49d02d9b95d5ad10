"""Peak training memory of a configuration, predicted on any machine without running it: two training steps on fake
tensors (shapes, no data), while a dispatch mode counts every storage from its creation until it is freed.

CUDA's autocast rule for norms and softmax matters (an fp32 norm makes the elementwise work after it fp32): with
it, the authors' configuration (one-hot dispatch, fp32 norms, stage 1, microbatch 256) counts 82.7 GiB against the
82.5 GiB they measured on an H200. What it cannot see: the caching allocator's rounding, cuBLAS / cuDNN
workspaces, the CUDA context and communication buffers.
"""
import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only


@contextlib.contextmanager
def cuda_autocast_policy():
    """Under autocast, run layer_norm and softmax in fp32 as CUDA autocast does (CPU autocast keeps their input
    dtype); norms that switch autocast off (low-precision norms) are left alone, as on CUDA. The functions are
    swapped for the duration rather than intercepted by a TorchFunctionMode, because activation checkpointing
    recomputes in backward, where such a mode is no longer active."""
    originals = (F.layer_norm, F.softmax, torch.Tensor.softmax)

    def in_fp32(op):
        def run(*args, **kwargs):
            if torch.is_autocast_enabled("cpu"):
                args, kwargs = tree_map_only(torch.Tensor, lambda t: t.float() if t.is_floating_point() else t,
                                             (args, kwargs))
            return op(*args, **kwargs)
        return run

    F.layer_norm, F.softmax, torch.Tensor.softmax = (in_fp32(op) for op in originals)
    try:
        yield
    finally:
        F.layer_norm, F.softmax, torch.Tensor.softmax = originals


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive right now and their high-water mark; a storage counts once however many views."""

    def __init__(self):
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.now = self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.sizes:
            return
        self.sizes[key] = storage.nbytes()
        self.now += self.sizes[key]
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.sizes.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out


def materialize_fake(module: torch.nn.Module) -> torch.nn.Module:
    """Meta parameters and buffers replaced by fake CPU tensors of the same shapes (inside a FakeTensorMode;
    `to_empty` would try to swap the tensors in place, which fails from meta to fake)."""
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None:
                sub._parameters[name] = torch.nn.Parameter(torch.empty(param.shape, dtype=param.dtype),
                                                           requires_grad=param.requires_grad)
        for name, buffer in sub._buffers.items():
            if buffer is not None:
                sub._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype)
    return module


def estimate_training_memory(build_model, build_step, steps: int = 2) -> dict:
    """Bytes of the parameters, of what stays between steps and of the last step's peak, on fake tensors under
    CUDA's autocast rules. `build_model()` creates the model on the meta device (initialisers need data);
    `build_step(model)` returns step(), the whole training step, autocast included. What either creates is
    counted: optimizer, EMA, batch."""
    with FakeTensorMode():
        model = materialize_fake(build_model())
        live = LiveBytes()
        for p in model.parameters():
            live.track(p)
        param_bytes = live.now
        with live, cuda_autocast_policy():
            step = build_step(model)
            for i in range(steps):
                if i == steps - 1:
                    live.reset_peak()  # the first step also allocates the optimizer's state: measure a later one
                step()
            resident = live.now
    return {"params": param_bytes, "resident": resident, "peak": live.peak}
