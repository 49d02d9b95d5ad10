"""Speed and memory measurements of MicroDiT at the shapes and settings of a stage config (`microdit bench`)."""
import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock time measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(run, calls: int, device: torch.device) -> float:
    """Wall-clock seconds per call of `run()` over `calls` calls, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        run()
    synchronize(device)
    return (time.perf_counter() - start) / calls
