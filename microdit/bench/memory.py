"""Peak training memory of a configuration, predicted on any machine without running it.

The model, optimizer and batch are fake tensors (shapes and dtypes, no data) on the CPU, so a 1.16 B-parameter
model at microbatch 256 costs seconds and no memory. Two real training steps run under bf16 autocast with the same
code as training (EDM loss, backward, grad clipping, AdamW); a dispatch mode counts the bytes of every storage
from its creation until it is freed, so the peak is the high-water mark of live tensors: parameters, gradients,
AdamW state, the activations autograd keeps for backward, and the temporaries of each kernel.

What it cannot see: the CUDA caching allocator's rounding and fragmentation, cuBLAS / cuDNN workspaces, the CUDA
context, and communication buffers. CPU autocast also differs from CUDA autocast in two ops: CUDA runs layer_norm
and softmax in fp32 for bf16 inputs (fp32 outputs), CPU keeps bf16. With low-precision norms (the authors'
setting) the norms agree; the MoE gate softmax is tiny. Compare `peak_gib` with `torch.cuda.max_memory_allocated`
on a GPU (`microdit bench` prints both) before trusting a margin under ~10 %.
"""
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


def materialize_fake(module: torch.nn.Module) -> None:
    """Replace meta parameters and buffers by fake CPU tensors of the same shapes (inside a FakeTensorMode)."""
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None:
                sub._parameters[name] = torch.nn.Parameter(torch.empty(param.shape, dtype=param.dtype),
                                                           requires_grad=param.requires_grad)
        for name, buffer in sub._buffers.items():
            if buffer is not None:
                sub._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype)


def estimate_training_memory(build_model, train_step, steps: int = 2) -> dict:
    """Run `train_step(model, optimizer)` `steps` times on fake tensors; bytes of the parameters, of what stays
    between steps (parameters + AdamW state) and the last step's peak.

    `build_model()` must create the model on the meta device (initialisers need data); `train_step` does the whole
    step, autocast included, and may build its inputs inside (they are counted).
    """
    with FakeTensorMode():
        model = build_model()
        materialize_fake(model)
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
        live = LiveBytes()
        for p in params:
            live.track(p)
        param_bytes = live.now
        with live:
            for i in range(steps):
                if i == steps - 1:
                    live.reset_peak()  # the first step also allocates AdamW's state: measure a steady-state step
                train_step(model, optimizer)
            resident = live.now
    return {"params": param_bytes, "resident": resident, "peak": live.peak}
