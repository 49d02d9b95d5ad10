"""Speed and memory measurements of MicroDiT at the paper's shapes (`microdit bench`)."""
import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock time measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_record() -> dict:
    """This process's compile-cache lookups so far: hits mean graphs found compiled (a restart)."""
    from torch._dynamo.utils import counters  # here: importing dynamo costs every command seconds

    cache = counters["aot_autograd"]
    return {"compile_cache_hits": cache["autograd_cache_hit"], "compile_cache_misses": cache["autograd_cache_miss"]}
