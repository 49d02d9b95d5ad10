"""`microdit bench layers`: which form of a layer is fastest, timed alone (forward + backward) instead of a full step
per variant: every SDPA backend over the step's attention calls, every MoE dispatch over its MoE layers. The calls,
with their shapes, strides and counts, are read off one forward of the real model on the meta device.
"""
from collections import Counter
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from microdit.bench import seconds_per_call
from microdit.bench.timing import training_loss
from microdit.models.layers import ExpertChoiceMoE, attention
from microdit.train.config import StageConfig
from microdit.train.trainer import build_model, example_batch


@dataclass(frozen=True)
class TensorSpec:
    """What a layer call is timed on: shape, strides, offset into its storage (a view such as the values half of a
    fused key-value projection has one), dtype and whether it needs a gradient."""
    shape: tuple
    stride: tuple
    storage_offset: int
    dtype: torch.dtype
    requires_grad: bool

    @classmethod
    def of(cls, tensor: torch.Tensor, grad: bool) -> "TensorSpec":
        # recorded without gradients; in training every floating input of a layer depends on the parameters
        return cls(tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset(), tensor.dtype,
                   grad and tensor.is_floating_point())

    def random(self, device) -> torch.Tensor:
        span = 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.stride))
        storage = torch.empty(self.storage_offset + span, dtype=self.dtype, device=device)
        storage.normal_() if self.dtype.is_floating_point else storage.zero_()
        tensor = storage.as_strided(self.shape, self.stride, self.storage_offset)
        # detached, the strided view becomes a leaf of its own, which may require a gradient
        return tensor.detach().requires_grad_() if self.requires_grad else tensor


class _AttentionRecorder(TorchFunctionMode):
    """Counts scaled_dot_product_attention calls by the specs of q, k and v (other arguments are never passed)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls[tuple(TensorSpec.of(t, grad=True) for t in args[:3])] += 1
        return func(*args, **(kwargs or {}))


def recorded_layer_calls(cfg: StageConfig) -> tuple[Counter, Counter]:
    """(attention, moe): how often one training forward of the stage calls scaled_dot_product_attention with each
    (q, k, v) spec, and each MoE layer with each input spec ((num_experts, dim, hidden, capacity), x spec)."""
    with torch.device("meta"):
        dit = build_model(cfg).train()
    batch = example_batch(cfg, torch.device("meta"), cfg.micro_batch)
    moe: Counter = Counter()

    def count_moe(module, args):
        moe[(*module.w1.shape, module.capacity), TensorSpec.of(args[0], grad=True)] += 1

    for module in dit.modules():  # a model of its own: the hooks go with it
        if isinstance(module, ExpertChoiceMoE):
            module.register_forward_pre_hook(count_moe)
    with torch.no_grad(), _AttentionRecorder() as attention:
        training_loss(dit, cfg, batch)
    return attention.calls, moe


def _warm_ms_per_call(run, repeats: int, device: torch.device) -> float:
    run()  # first call: kernel selection, cuDNN plans, compilation
    return 1e3 * seconds_per_call(run, repeats, device)


def time_attention(calls: Counter, backend: str, dtype: torch.dtype, device: torch.device, repeats: int) -> dict:
    """Milliseconds per step of forward + backward over `calls` with one of layers.SDPA_BACKENDS, and per shape. A
    shape the backend cannot run (not built for this device, or outside its size limits) gets an 'error' and leaves
    the per-step total unknown (None)."""
    shapes, total, flops = [], 0.0, 0.0
    for (q_spec, k_spec, v_spec), count in calls.items():
        q, k, v = (replace(spec, dtype=dtype).random(device) for spec in (q_spec, k_spec, v_spec))
        grad_out = torch.randn(q.shape[:-1] + v.shape[-1:], dtype=dtype, device=device)
        shape = {"q": list(q.shape), "k": list(k.shape), "calls_per_step": count}
        flops += count * attention_flops(q.shape, k.shape)

        def run():
            torch.autograd.grad(attention(q, k, v, backend), (q, k, v), grad_out)

        try:
            ms = _warm_ms_per_call(run, repeats, device)
        except RuntimeError as error:  # "No available kernel", or a kernel's size limits
            shapes.append({**shape, "error": str(error).strip().splitlines()[0][:300]})
            total = None
            continue
        shapes.append({**shape, "ms_per_call": round(ms, 4)})
        total = None if total is None else total + count * ms
    return {"ms_per_step": total, "tflop_per_s": flops / total / 1e9 if total else None, "shapes": shapes}


def attention_flops(q_shape, k_shape) -> float:
    """Forward + backward FLOPs of one attention call as the step's count has them (bench/timing.py counts
    attention's two matmuls, forward and their two gradients each): 3 x 2 matmuls of 2 B H Tq Tk d."""
    batch, heads, queries, head_dim = q_shape
    return 3 * 2 * 2 * batch * heads * queries * k_shape[2] * head_dim


def time_moe(calls: Counter, dispatch: str, dtype: torch.dtype, device: torch.device, repeats: int) -> dict:
    """Milliseconds per step of forward + backward over the MoE layers in `calls` with one dispatch, eager, fp32
    weights under autocast to `dtype` as in training (no autocast for fp32)."""
    shapes, total = [], 0.0
    for ((experts, dim, hidden, capacity), x_spec), count in calls.items():
        with device:
            moe = ExpertChoiceMoE(dim, hidden, 1, experts, capacity)
        moe.dispatch = dispatch
        torch.nn.init.normal_(moe.w1, std=0.02)
        torch.nn.init.normal_(moe.w2, std=0.02)
        x = replace(x_spec, dtype=dtype).random(device)
        params = (x, *moe.parameters())

        def run():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = moe(x)
            torch.autograd.grad(out, params, torch.ones_like(out))

        ms = _warm_ms_per_call(run, repeats, device)
        shapes.append({"x": list(x.shape), "hidden": hidden, "calls_per_step": count, "ms_per_call": round(ms, 4)})
        total += count * ms
    return {"ms_per_step": total, "shapes": shapes}
