"""Speed and memory measurements of MicroDiT at the paper's shapes (`microdit bench`)."""
import sys
import time

import torch

from microdit.models.compile_phases import phases_since


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock time measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_record(phases_before: dict) -> dict:
    """This process's compile-cache lookups so far (hits mean graphs found compiled: a restart, or precompiled) and
    its compile phases since `phases_before` (a `phase_totals()` taken before the first compiled call)."""
    from torch._dynamo.utils import counters

    cache = counters["aot_autograd"]
    return {"compile_cache_hits": cache["autograd_cache_hit"], "compile_cache_misses": cache["autograd_cache_miss"],
            "compile_phase_s": phases_since(phases_before)}


def precompile_for_measurement(dit, options, forward, grad: bool, workers: int, device: torch.device) -> dict:
    """With `workers`, the block graphs compiled in that many processes first (models/precompile.py): its seconds
    and graph counts. Either way the device's peak memory starts afresh after it, so that the reported peak is the
    measured work's, not precompiling's eager recording call's."""
    record = {}
    if workers:
        from microdit.models.precompile import precompile_blocks

        started = time.perf_counter()
        result = precompile_blocks(dit, options, forward, grad=grad, workers=workers)
        record = {"precompile_s": time.perf_counter() - started, "precompiled_graphs": result["graphs"],
                  "precompile_failures": len(result["failed"]), "precompile_share_s": result["share_seconds"],
                  "precompile_graph_s": result["graph_seconds"],
                  "precompile_share_phase_s": result["share_phase_seconds"]}
        # before the measurement: an item killed at its time limit keeps this in the suite's log
        print(f"precompiled {result['compiled']} of {result['graphs']} graphs in {record['precompile_s']:.1f} s",
              file=sys.stderr, flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return record
