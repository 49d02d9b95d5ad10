"""Where a training step's time goes: the top operators of a few profiled steps, as plain JSON.

One GPU session is short; printing the kernel breakdown next to the timing saves a second session just to look.
"""
import torch
from torch.profiler import ProfilerActivity, profile

from microdit.bench import synchronize


def top_operators(run_step, device: torch.device, steps: int = 3, top: int = 15) -> list[dict]:
    """Run `run_step()` `steps` times under torch.profiler; the `top` operators by self time on the device (the CPU
    when there is no GPU): name, milliseconds per step, share of the profiled time, calls per step."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run_step()
        synchronize(device)
    field = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, field) > 0]
    total = sum(getattr(e, field) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, field), reverse=True)
    return [{"op": e.key[:160], "ms_per_step": round(getattr(e, field) / 1e3 / steps, 3),
             "share": round(getattr(e, field) / total, 4), "calls_per_step": e.count // steps}
            for e in events[:top]]
