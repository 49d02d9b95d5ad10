"""Sampler throughput: the paper's 30-step Heun sampler with classifier-free guidance on random latents/captions.

Random weights run exactly the kernels trained ones do, so images/s transfers; the VAE decode is not included.
"""
import time
from contextlib import nullcontext

import torch

from microdit.bench import compile_record, synchronize
from microdit.bench.training_step import random_batch
from microdit.diffusion.edm import EDMConfig
from microdit.models.dit import MicroDiT, variant_config
from microdit.models.latent_diffusion import sample_latents
from microdit.models.speed import SpeedOptions, apply_speed_options
from microdit.train.metrics import memory_gib

WARMUP_STEPS = 3
STATE_DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def time_sampling(arch: str, resolution: int, batch: int, steps: int, guidance: float, precision: str,
                  state_dtype: str, options: SpeedOptions, repeats: int, device: torch.device) -> dict:
    config = variant_config(arch, input_size=resolution // 8, pos_interp_scale=resolution / 256)
    torch.manual_seed(0)
    with device:
        dit = MicroDiT(config).eval()
    apply_speed_options(dit, options)
    noise, captions = random_batch(config, batch, device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext())

    def sample(num_steps: int) -> None:
        with autocast:
            sample_latents(dit, noise, captions, EDMConfig(), num_steps, guidance, STATE_DTYPES[state_dtype])
        synchronize(device)

    start = time.perf_counter()
    # Three steps run every code path (Heun steps and the final Euler one) and pay any compile cost; a whole
    # warm-up batch would double the cost of an eager measurement.
    sample(min(steps, WARMUP_STEPS))
    warmup_s = time.perf_counter() - start
    compiled = compile_record() if options.compile != "none" else {}
    start = time.perf_counter()
    for _ in range(repeats):
        sample(steps)
    batch_s = (time.perf_counter() - start) / repeats
    return {"batch_s": batch_s, "warmup_s": warmup_s, **compiled, "warmup_steps": min(steps, WARMUP_STEPS),
            "img_per_s": batch / batch_s, "peak_mem_gib": memory_gib(device)}
