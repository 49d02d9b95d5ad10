"""Training-step throughput at each stage's shape.

A step is forward + EDM loss + backward + grad-norm clipping + AdamW, bf16 autocast with fp32 master weights on
GPU (fp32 on CPU), timed after warm-up with the device synchronised. The first warm-up step is timed on its own:
with compilation on, it is the compile cost a (re)start pays.

MFU = (training FLOPs per image x images/s) / (dense bf16 peak of the device). Training FLOPs per image are counted,
not estimated: torch.utils.flop_counter.FlopCounterMode records every matmul, convolution and attention kernel of one
forward + backward of a single image, run on the meta device (no compute). That counts what the model really
executes: the mixer on all tokens, the backbone on the kept ones, each MoE expert on its capacity x tokens / experts
tokens, cross-attention over the 77 caption tokens. Elementwise work, norms and the optimizer are not counted.
"""
import time
from dataclasses import dataclass, replace

import torch

from microdit.bench import compile_record, synchronize
from microdit.bench.memory import estimate_training_memory
from microdit.bench.profile import time_breakdown
from microdit.diffusion.edm import EDMConfig, edm_loss
from microdit.models.dit import MicroDiT, variant_config
from microdit.models.speed import SpeedOptions, apply_speed_options
from microdit.train.metrics import memory_gib, train_flops_per_sample


@dataclass(frozen=True)
class StageShape:
    resolution: int
    mask_ratio: float
    microbatch: int      # the authors' per-GPU microbatch
    grad_clip: float
    p_mean: float
    p_std: float
    pos_interp_scale: float


STAGES = {
    1: StageShape(256, 0.75, 256, 0.25, -0.6, 1.2, 1.0),
    2: StageShape(256, 0.0, 64, 0.25, -0.6, 1.2, 1.0),
    3: StageShape(512, 0.75, 32, 0.5, 0.0, 0.6, 2.0),
    4: StageShape(512, 0.0, 16, 0.5, 0.0, 0.6, 2.0),
}

CAPTION_TOKENS = 77


def stage_config(arch: str, stage: StageShape):
    return variant_config(arch, input_size=stage.resolution // 8, pos_interp_scale=stage.pos_interp_scale)


def random_batch(config, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    latents = torch.randn(batch, config.in_channels, config.input_size, config.input_size, device=device)
    captions = torch.randn(batch, 1, CAPTION_TOKENS, config.caption_channels, device=device)
    return latents, captions


def make_loss(stage: StageShape, latents: torch.Tensor, captions: torch.Tensor, autocast: bool):
    """loss(model): the EDM loss of a fixed batch under the bench's autocast."""
    edm = EDMConfig(p_mean=stage.p_mean, p_std=stage.p_std)

    def loss(model) -> torch.Tensor:
        with torch.autocast(latents.device.type, dtype=torch.bfloat16, enabled=autocast):
            return edm_loss(model, latents, captions, edm, stage.mask_ratio)

    return loss


def make_train_step(stage: StageShape, latents: torch.Tensor, captions: torch.Tensor, autocast: bool):
    """step(model, optimizer): one full training step on a fixed batch, the same code the estimator runs."""
    loss_of = make_loss(stage, latents, captions, autocast)

    def step(model, optimizer) -> None:
        loss = loss_of(model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_flops_per_image(config, stage: StageShape) -> float:
    with torch.device("meta"):
        dit = MicroDiT(config)
        latents, captions = random_batch(config, 1, "meta")
    edm = EDMConfig(p_mean=stage.p_mean, p_std=stage.p_std)
    return train_flops_per_sample(lambda b: edm_loss(dit, b["latents"], captions, edm, stage.mask_ratio),
                                  {"latents": latents})


def predicted_memory(arch: str, stage: StageShape, microbatch: int, options: SpeedOptions) -> dict:
    """Peak memory of a bf16-autocast training step, predicted on fake tensors (compilation is not modelled)."""
    config = stage_config(arch, stage)

    def build() -> MicroDiT:
        with torch.device("meta"):
            dit = MicroDiT(config)
        apply_speed_options(dit, replace(options, compile="none"))
        return dit

    def step(model, optimizer) -> None:
        latents, captions = random_batch(config, microbatch, "cpu")
        make_train_step(stage, latents, captions, autocast=True)(model, optimizer)

    used = estimate_training_memory(build, step)
    gib = {name: used[name] / 2 ** 30 for name in ("params", "resident", "peak")}
    # transient: activations kept for backward, gradients and kernel temporaries
    return {"params_gib": gib["params"], "resident_gib": gib["resident"], "peak_gib": gib["peak"],
            "transient_gib": gib["peak"] - gib["resident"]}


def fit_checkpointing(arch: str, stage: StageShape, microbatch: int, options: SpeedOptions,
                      budget_gib: float) -> tuple[int, bool, dict]:
    """(blocks, fits, prediction): the fewest DiT blocks to recompute so that the predicted peak fits `budget_gib`
    (binary search: the peak falls as blocks are added); all blocks and fits=False when even that does not fit."""
    config = stage_config(arch, stage)
    low, high = 0, config.depth + config.patch_mixer_depth
    predictions = {}

    def peak(blocks: int) -> float:
        if blocks not in predictions:
            predictions[blocks] = predicted_memory(arch, stage, microbatch, replace(options, checkpoint_blocks=blocks))
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


def time_training_step(arch: str, stage: StageShape, microbatch: int, options: SpeedOptions, steps: int,
                       warmup: int, device: torch.device, profile: bool = False) -> dict:
    """Measured seconds per step, first-step (compile) seconds and peak allocated memory on `device`; with
    `profile`, also where three more steps spend the device's time (bench/profile.py; after the timing, so that it
    does not disturb it)."""
    config = stage_config(arch, stage)
    torch.manual_seed(0)
    with device:  # initialise on the device: an XL initialised on the CPU costs more than the measurement
        dit = MicroDiT(config).train()
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1, eps=1e-8,
                                  fused=device.type == "cuda")
    apply_speed_options(dit, options)
    latents, captions = random_batch(config, microbatch, device)
    step = make_train_step(stage, latents, captions, autocast=device.type == "cuda")
    start = time.perf_counter()
    step(dit, optimizer)
    synchronize(device)
    first_step_s = time.perf_counter() - start
    # whether the first step compiled or found its graphs in the compile cache
    compiled = compile_record() if options.compile != "none" else {}
    for _ in range(warmup - 1):
        step(dit, optimizer)
    start = time.perf_counter()
    for _ in range(steps):
        step(dit, optimizer)
    synchronize(device)
    step_s = (time.perf_counter() - start) / steps
    measured = {"params": sum(p.numel() for p in dit.parameters()), "step_s": step_s, "first_step_s": first_step_s,
                **compiled, "peak_mem_gib": memory_gib(device)}
    if profile:
        try:
            measured["profile"] = time_breakdown(lambda: step(dit, optimizer), device)
        except Exception as error:  # a diagnostic: its failure must not cost the measurement made above
            measured["profile"] = {"error": f"{type(error).__name__}: {error}"[:500]}
    return measured
