"""The trainer's step and the sampler at a stage config's shapes and settings: timed (`bench train`, `bench
sample`), counted in FLOPs, and the step's memory predicted without running it (`bench memory`). The step is one
rank's at the paper's layout (no accumulation, no communication); docs/benchmarks.md says what MFU counts.
"""
from dataclasses import replace

import torch

from microdit.bench import seconds_per_call
from microdit.bench.memory import estimate_training_memory
from microdit.bench.profile import time_breakdown
from microdit.diffusion.edm import EDMConfig
from microdit.models.dit import MicroDiT, variant_config
from microdit.models.latent_diffusion import sample_latents
from microdit.models.speed import apply_speed_options
from microdit.train.config import StageConfig
from microdit.train.ema import EMA
from microdit.train.metrics import memory_gib, train_flops_per_sample
from microdit.train.optim import apply_gradients, build_optimizer, set_lr
from microdit.train.trainer import autocast, build_model, denoising_loss, example_batch

WARMUP_STEPS = 3  # untimed before the timing, the first one timed alone (what a start pays, compiling included)
STATE_DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def build_denoiser(cfg: StageConfig, device: torch.device) -> MicroDiT:
    """The trainer's model with the stage's speed settings, initialised on `device` (an XL initialised on the CPU
    costs more than the measurement)."""
    torch.manual_seed(cfg.seed)
    with device:
        model = build_model(cfg)
    apply_speed_options(model, cfg.speed_options())
    return model


def training_loss(model, cfg: StageConfig, batch: dict) -> torch.Tensor:
    edm = EDMConfig(p_mean=cfg.model.p_mean, p_std=cfg.model.p_std)
    return denoising_loss(model, batch, edm, cfg.model.train_mask_ratio)


def trainer_step(model: MicroDiT, cfg: StageConfig, batch: dict):
    """(step, optimizer, ema): step() is one optimizer step of the trainer on `batch`, then its EMA update. The
    groups train at the schedule's peak learning rate, each at its scale; the EMA averages as after its start."""
    optimizer = build_optimizer(model, cfg.optim)
    set_lr(optimizer, cfg.optim.lr)
    ema = EMA(model, cfg.ema) if cfg.ema is not None else None
    ema_step = cfg.ema.every * (cfg.ema.start_step + 1) if ema else 0  # past the start, on an averaging step

    def step() -> None:
        with autocast(cfg, batch["latents"].device.type):
            training_loss(model, cfg, batch).backward()
        apply_gradients(model, optimizer, cfg.optim.grad_clip)
        if ema is not None:
            ema.update(model, ema_step)

    return step, optimizer, ema


def time_training(cfg: StageConfig, device: torch.device, steps: int, profile: bool = False) -> dict:
    """Seconds per step, first-step seconds and peak allocated memory on `device`; with `profile`, also where three
    more steps spend the device's time (bench/profile.py; after the timing, so that it does not disturb it)."""
    model = build_denoiser(cfg, device).train()
    step, _, _ = trainer_step(model, cfg, example_batch(cfg, device, cfg.micro_batch))
    first_step_s = seconds_per_call(step, 1, device)
    for _ in range(WARMUP_STEPS - 1):
        step()
    measured = {"params": sum(p.numel() for p in model.parameters()), "step_s": seconds_per_call(step, steps, device),
                "first_step_s": first_step_s, "peak_mem_gib": memory_gib(device)}
    if profile:
        try:
            measured["profile"] = time_breakdown(step, device)
        except Exception as error:  # a diagnostic: its failure must not cost the measurement made above
            measured["profile"] = {"error": f"{type(error).__name__}: {error}"[:500]}
    return measured


def training_flops_per_image(cfg: StageConfig) -> float:
    """The trainer's count of one image's forward + backward FLOPs, on the meta device (no compute, no memory);
    `bench train` and `plan` both use it, so their numbers agree."""
    with torch.device("meta"):
        model = build_model(cfg).train()
    return train_flops_per_sample(lambda batch: training_loss(model, cfg, batch),
                                  example_batch(cfg, torch.device("meta")))


def time_sampling(cfg: StageConfig, batch: int, state_dtype: str, device: torch.device, repeats: int = 2) -> dict:
    """The stage's sample grids (samples.steps Heun steps at samples.guidance_scale, guidance batched) on random
    weights, noise and captions: random weights run the kernels trained ones do. The VAE decode is not included."""
    model = build_denoiser(cfg, device).eval()
    inputs = example_batch(cfg, device, batch)

    def sample(steps: int) -> None:
        with autocast(cfg, device.type):
            sample_latents(model, inputs["latents"], inputs["caption_latents"], EDMConfig(), steps,
                           cfg.samples.guidance_scale, STATE_DTYPES[state_dtype])

    # a few steps run every code path (Heun steps and the final Euler one) and pay any compile cost
    warmup = min(cfg.samples.steps, WARMUP_STEPS)
    warmup_s = seconds_per_call(lambda: sample(warmup), 1, device)
    batch_s = seconds_per_call(lambda: sample(cfg.samples.steps), repeats, device)
    return {"batch_s": batch_s, "warmup_s": warmup_s, "warmup_steps": warmup, "img_per_s": batch / batch_s,
            "peak_mem_gib": memory_gib(device)}


def eager(cfg: StageConfig) -> StageConfig:
    """What bench memory predicts: the compiler cannot run on fake tensors under the byte counter."""
    return replace(cfg, compile="none", activation_budget=1.0)


def predicted_memory(cfg: StageConfig) -> dict:
    """GiB of the eager step's parameters, what stays between steps (+ optimizer and EMA state, the batch), and the
    peak, predicted on fake tensors (bench/memory.py)."""
    cfg = eager(cfg)

    def build_step(model):
        return trainer_step(model, cfg, example_batch(cfg, torch.device("cpu"), cfg.micro_batch))[0]

    used = estimate_training_memory(lambda: build_denoiser(cfg, torch.device("meta")), build_step)
    gib = {name: used[name] / 2 ** 30 for name in ("params", "resident", "peak")}
    # transient: activations kept for backward, gradients and kernel temporaries
    return {"params_gib": gib["params"], "resident_gib": gib["resident"], "peak_gib": gib["peak"],
            "transient_gib": gib["peak"] - gib["resident"]}


def fit_checkpointing(cfg: StageConfig, budget_gib: float) -> tuple[int, bool, dict]:
    """(blocks, fits, prediction): the fewest DiT blocks to recompute so that the predicted peak fits `budget_gib`
    (binary search: the peak falls as blocks are added); all blocks and fits=False when even that does not fit."""
    config = variant_config(cfg.model.arch, **cfg.model.overrides)
    low, high = 0, config.depth + config.patch_mixer_depth
    predictions = {}

    def peak(blocks: int) -> float:
        if blocks not in predictions:
            predictions[blocks] = predicted_memory(replace(cfg, checkpoint_blocks=blocks))
        return predictions[blocks]["peak_gib"]

    if peak(high) > budget_gib:
        return high, False, predictions[high]
    while low < high:
        middle = (low + high) // 2
        if peak(middle) <= budget_gib:
            high = middle
        else:
            low = middle + 1
    return low, True, predictions[low]  # `high` only ever takes values whose peak was predicted
