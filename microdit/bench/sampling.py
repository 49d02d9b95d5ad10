"""Sampler throughput: the paper's 30-step Heun sampler with classifier-free guidance on random latents/captions.

Random weights run exactly the kernels trained ones do, so images/s transfers; the VAE decode is not included.
"""
import time
from collections.abc import Iterator
from contextlib import nullcontext

import torch

from microdit.bench import compile_record, precompile_for_measurement, synchronize
from microdit.bench.training_step import random_batch
from microdit.diffusion.edm import EDMConfig, heun_sampler
from microdit.models.compile_phases import phase_totals
from microdit.models.dit import MicroDiT, variant_config
from microdit.models.speed import SpeedOptions, apply_speed_options
from microdit.train.metrics import memory_gib

WARMUP_STEPS = 3
STATE_DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def time_sampling(arch: str, resolution: int, batch: int, steps: int, guidance: float, precision: str,
                  state_dtype: str, options: SpeedOptions, repeats: int, device: torch.device,
                  precompile_workers: int = 0, cuda_graphs: tuple[bool, ...] = (False,)) -> Iterator[dict]:
    """One measurement per entry of `cuda_graphs` (whether the network's calls replay a CUDA graph), in this
    order, in this process, each yielded as it is done (a capture that fails keeps the plain measurement). After
    the first, the compiled blocks are warm, so a later entry's warm-up is its capture's alone, and the two compare
    on the same compiled code. A later entry also says how far its latents
    are from the first entry's (same noise, captions and kernels: a replay that read a stale input or an
    overwritten output would show here, on the GPU, where the CPU tests can only emulate a graph)."""
    config = variant_config(arch, input_size=resolution // 8, pos_interp_scale=resolution / 256)
    torch.manual_seed(0)
    with device:
        dit = MicroDiT(config).eval()
    apply_speed_options(dit, options)
    noise, captions = random_batch(config, batch, device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext())

    def sample(num_steps: int, cuda_graph: bool = False) -> torch.Tensor:
        with autocast:
            latents = heun_sampler(dit, noise, captions, EDMConfig(), num_steps, cfg=guidance,
                                   state_dtype=STATE_DTYPES[state_dtype], cuda_graph=cuda_graph)
        synchronize(device)
        return latents

    start = time.perf_counter()
    precompiled = precompile_for_measurement(dit, options, lambda: sample(1), False, precompile_workers, device)
    first_latents = None
    for number, cuda_graph in enumerate(cuda_graphs):
        if number:
            start = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        # Three steps run every code path (Heun steps and the final Euler one) and pay any compile cost; a whole
        # warm-up batch would double the cost of an eager measurement.
        phases_before = phase_totals()
        sample(min(steps, WARMUP_STEPS), cuda_graph)
        warmup_s = time.perf_counter() - start
        if options.compile != "none":
            precompiled.update(compile_record(phases_before))
        start = time.perf_counter()
        for _ in range(repeats):
            latents = sample(steps, cuda_graph)
        batch_s = (time.perf_counter() - start) / repeats
        agreement = {}
        if first_latents is None:
            first_latents = latents
        else:
            agreement = {"max_abs_diff_vs_first": (latents - first_latents).abs().max().item()}
        yield {"cuda_graph": cuda_graph, "batch_s": batch_s, "warmup_s": warmup_s, **precompiled,
               "warmup_steps": min(steps, WARMUP_STEPS), "img_per_s": batch / batch_s,
               "peak_mem_gib": memory_gib(device), **agreement}
        precompiled = {}  # the precompiling was the first entry's; a later one reports its own compile record
