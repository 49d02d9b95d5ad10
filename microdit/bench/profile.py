"""Where a training step's time goes: the device's kernels over a few profiled steps, by kind and by name, as JSON.

One GPU session is short; printing the breakdown next to the timing saves a second session just to look. On a GPU
only kernels are counted (an operator's device time is its kernels' time, so counting both would count it twice);
on the CPU, the operators' self time.
"""
import re
from collections import defaultdict

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from microdit.bench import synchronize

# (kind, pattern on the kernel's name), first match wins: inductor's generated kernels by their prefixes (their
# names list the fused operators, attention's included), then attention before matmuls (cuDNN's attention kernels
# are wgmma kernels too).
KERNEL_KINDS = (
    ("matmul", r"^triton_tem_"),
    ("compiled pointwise", r"^triton_poi_"),
    ("compiled reduction", r"^triton_(red|per)_"),
    ("attention", r"sdpa|flash|fmha|attention"),
    ("matmul", r"nvjet|gemm|cutlass|xmma|wgmma|aten::mm$|aten::bmm$|aten::addmm$"),
    ("optimizer and grad clipping (foreach)", r"multi_tensor_apply|adam|foreach"),
    ("norm (eager)", r"layer_norm"),
    ("copy or cast (eager)", r"copy"),
    ("gather, scatter, index, top-k", r"scatter|gather|index|topk|sort"),
    ("reduction or softmax (eager)", r"reduce_kernel|softmax|aten::sum$|aten::mean$"),
    ("elementwise (eager)", r"elementwise_kernel|aten::(mul|add|sub|div|gelu|silu)"),
    ("memset or memcpy", r"memset|memcpy"),
    ("collective", r"nccl|gloo"),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, lowered)), "other")


def timed_events(averages, cuda: bool) -> list[tuple[str, float, int]]:
    """(name, microseconds, calls) of what ran: on a GPU its kernels, on the CPU each operator's self time. A GPU
    also records the span of a `record_function` region, such as `Optimizer.step#AdamW.step`, as a device event
    over kernels already counted: user annotations are left out (run 4 counted AdamW's 10 ms twice)."""
    if cuda:
        return [(e.key, e.self_device_time_total, e.count) for e in averages
                if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0
                and not getattr(e, "is_user_annotation", False)]
    return [(e.key, e.self_cpu_time_total, e.count) for e in averages if e.self_cpu_time_total > 0]


def time_breakdown(run_step, device: torch.device, steps: int = 3, top: int = 30) -> dict:
    """Run `run_step()` `steps` times under torch.profiler: the device's busy milliseconds per step, the time per
    kind of kernel (KERNEL_KINDS) and the `top` kernels by time: name, kind, ms per step, share, calls per step."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run_step()
        synchronize(device)
    events = timed_events(prof.key_averages(), cuda)
    busy_us = sum(us for _, us, _ in events) or 1.0
    kinds = defaultdict(lambda: [0.0, 0])
    for name, us, count in events:
        kinds[kernel_kind(name)][0] += us
        kinds[kernel_kind(name)][1] += count

    def row(us: float, count: int) -> dict:
        return {"ms_per_step": round(us / 1e3 / steps, 3), "share": round(us / busy_us, 4),
                "calls_per_step": count // steps}

    events.sort(key=lambda e: e[1], reverse=True)
    return {"device_ms_per_step": round(busy_us / 1e3 / steps, 3),
            "kinds": [{"kind": kind, **row(us, count)}
                      for kind, (us, count) in sorted(kinds.items(), key=lambda k: k[1][0], reverse=True)],
            "top": [{"name": name[:160], "kind": kernel_kind(name), **row(us, count)}
                    for name, us, count in events[:top]]}
