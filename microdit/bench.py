"""`microdit bench`: training-step throughput at each stage's shape, one JSON line per stage.

A step is forward + EDM loss + backward + AdamW (+ grad-norm clipping), bf16 autocast with fp32 master weights on
GPU (fp32 on CPU), timed after warm-up with the device synchronised.

MFU = (training FLOPs per image x images/s) / (dense bf16 peak of the device). Training FLOPs per image are counted,
not estimated: torch.utils.flop_counter.FlopCounterMode records every matmul, convolution and attention kernel of one
forward + backward of a single image, run on the meta device (no compute). That counts what the model really
executes: the mixer on all tokens, the backbone on the kept ones, each MoE expert on its capacity x tokens / experts
tokens, cross-attention over the 77 caption tokens. Elementwise work, norms and the optimizer are not counted.
"""
import json
import resource
import time
from dataclasses import dataclass

import torch

from microdit.diffusion.edm import EDMConfig, edm_loss
from microdit.models.dit import MicroDiT, variant_config
from microdit.train.metrics import peak_flops, train_flops_per_sample


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


def _batch(config, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    latents = torch.randn(batch, config.in_channels, config.input_size, config.input_size, device=device)
    captions = torch.randn(batch, 1, CAPTION_TOKENS, config.caption_channels, device=device)
    return latents, captions


def training_flops_per_image(config, stage: StageShape) -> float:
    with torch.device("meta"):
        dit = MicroDiT(config)
        latents, captions = _batch(config, 1, "meta")
    edm = EDMConfig(p_mean=stage.p_mean, p_std=stage.p_std)
    return train_flops_per_sample(lambda b: edm_loss(dit, b["latents"], captions, edm, stage.mask_ratio),
                                  {"latents": latents})


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB, whole process


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_stage(arch: str, stage_id: int, microbatch: int | None, compile_model: bool, steps: int, warmup: int,
                device: torch.device, peak: float | None) -> dict:
    stage = STAGES[stage_id]
    config = variant_config(arch, input_size=stage.resolution // 8, pos_interp_scale=stage.pos_interp_scale)
    microbatch = microbatch or stage.microbatch
    torch.manual_seed(0)
    dit = MicroDiT(config).to(device).train()
    params = sum(p.numel() for p in dit.parameters())
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1, eps=1e-8,
                                  fused=device.type == "cuda")
    model = torch.compile(dit) if compile_model else dit
    edm = EDMConfig(p_mean=stage.p_mean, p_std=stage.p_std)
    latents, captions = _batch(config, microbatch, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = edm_loss(model, latents, captions, edm, stage.mask_ratio)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), stage.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    img_per_s = microbatch / step_s
    flops = training_flops_per_image(config, stage)
    return {
        "arch": arch, "stage": stage_id, "resolution": stage.resolution, "mask_ratio": stage.mask_ratio,
        "microbatch": microbatch, "compile": compile_model, "device": _device_name(device),
        "dtype": "bf16-autocast" if device.type == "cuda" else "fp32", "torch": torch.__version__,
        "params": params, "img_per_s": round(img_per_s, 3), "step_s": round(step_s, 5),
        "warmup_s": round(warmup_s, 3), "peak_mem_gib": round(peak_memory_gib(device), 3),
        "train_gflops_per_img": round(flops / 1e9, 3),
        "mfu": round(flops * img_per_s / peak, 4) if peak else None,
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="time training steps at each stage's shape (JSON lines)")
    p.add_argument("--arch", default="MicroDiT_XL_2")
    p.add_argument("--stage", type=int, action="append", choices=sorted(STAGES),
                   help="stage to time; repeat for several (default: all four)")
    p.add_argument("--microbatch", type=int, help="per-device batch (default: the authors' per stage)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser (warm-up time reported)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU when the device is not in the table")
    p.add_argument("--json", action="store_true", help="JSON lines only (the default output is JSON lines too, "
                                                       "with a header line on stderr)")
    p.set_defaults(func=run)


def run(args) -> None:
    import sys

    from microdit.sampling import pick_device

    device = pick_device(args.device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
    if not args.json:
        print(f"# microdit bench: {args.arch} on {_device_name(device)}, torch {torch.__version__}", file=sys.stderr)
    for stage_id in args.stage or sorted(STAGES):
        result = bench_stage(args.arch, stage_id, args.microbatch, args.compile, args.steps, args.warmup, device, peak)
        print(json.dumps(result), flush=True)
