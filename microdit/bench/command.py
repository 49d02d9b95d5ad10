"""`microdit bench {train,memory,sample,loader,suite}`: speed and memory at the paper's shapes, one JSON line per
measurement.

train   times full training steps per stage (img/s, first-step/compile seconds, peak memory, MFU);
memory  predicts a training step's peak memory on fake tensors: runs anywhere, no GPU, in seconds;
sample  times the 30-step Heun sampler with guidance at a resolution and batch;
layers  times the step's attention calls per SDPA backend and its MoE layers per dispatch (seconds of GPU time);
loader  times the training data loader over MDS shards (synthetic ones with the paper's layout by default);
suite   runs the prepared list of all of the above within a time budget (the one-call GPU run).
Timings belong in docs/benchmarks.md, never in tests.
"""
import argparse
import json
from dataclasses import asdict, replace

import torch

from microdit.bench.suite import CARD_FITS
from microdit.bench.training_step import (
    STAGES, fit_checkpointing, predicted_memory, stage_config, time_training_step, training_flops_per_image,
)
from microdit.errors import UserError
from microdit.models.layers import SDPA_BACKENDS, ExpertChoiceMoE
from microdit.models.speed import COMPILE_MODES, SpeedOptions


def _speed_arguments(p) -> None:
    p.add_argument("--arch", default="MicroDiT_XL_2")
    p.add_argument("--compile", choices=COMPILE_MODES, default="none",
                   help="none; model (whole denoiser, one graph); blocks (regional: each transformer block)")
    p.add_argument("--low-precision-norm", action="store_true", help="LayerNorms in bf16 (the authors' setting)")
    p.add_argument("--checkpoint-blocks", type=int, default=0,
                   help="recompute the activations of this many DiT blocks in backward (default 0)")
    p.add_argument("--dispatch", choices=ExpertChoiceMoE.DISPATCHES, default="index",
                   help="MoE dispatch: index (ours) or one_hot (the authors' dense form)")
    p.add_argument("--attention-backend", choices=sorted(SDPA_BACKENDS), default="default",
                   help="which SDPA kernels attention may use (default: PyTorch's pick; see bench layers)")
    p.add_argument("--activation-budget", type=float, default=1.0,
                   help="with --compile: fraction of activations compiled graphs keep, recomputing the rest")
    p.add_argument("--device", default="auto")


def _options(args) -> SpeedOptions:
    return SpeedOptions(compile=args.compile, low_precision_norm=args.low_precision_norm,
                        checkpoint_blocks=args.checkpoint_blocks, moe_dispatch=args.dispatch,
                        attention_backend=args.attention_backend, activation_budget=args.activation_budget)


def _stage_arguments(p) -> None:
    p.add_argument("--stage", type=int, action="append", choices=sorted(STAGES),
                   help="stage shape to use; repeat for several (default: all four)")
    p.add_argument("--microbatch", type=int, help="per-device batch (default: the authors' per stage)")


def register(subparsers) -> None:
    add_modes(subparsers.add_parser("bench", help="speed and memory at the paper's shapes (JSON lines)",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


def add_modes(bench) -> None:
    modes = bench.add_subparsers(dest="mode", required=True, metavar="MODE")

    p = modes.add_parser("train", help="time training steps at each stage's shape")
    _speed_arguments(p)
    _stage_arguments(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first, the first one timed alone (default 3)")
    p.add_argument("--predict-memory", action="store_true", help="also print the fake-tensor memory prediction")
    p.add_argument("--profile", action="store_true",
                   help="also print where three profiled steps spend the device's time (by kind of kernel, by kernel)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU when the device is not in the table")
    p.set_defaults(func=run_train)

    p = modes.add_parser("memory", help="predict a training step's peak memory without running it (any machine)")
    _speed_arguments(p)
    _stage_arguments(p)
    p.add_argument("--fit-gib", type=float, help="find the fewest --checkpoint-blocks whose predicted peak fits this "
                                                 "many GiB (leave a margin for the allocator: see docs/benchmarks.md)")
    p.set_defaults(func=run_memory)

    p = modes.add_parser("sample", help="time the Heun sampler with classifier-free guidance")
    _speed_arguments(p)
    p.add_argument("--resolution", type=int, action="append", help="image side in px; repeat (default 256 and 512)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--state-dtype", choices=("fp32", "fp64"), default="fp32", help="dtype of the sampler's x")
    p.add_argument("--repeats", type=int, default=2, help="timed batches after a 3-step warm-up")
    p.set_defaults(func=run_sample)

    p = modes.add_parser("layers", help="time the step's attention calls per SDPA backend and MoE layers per "
                                        "dispatch, forward + backward, at each stage's shapes")
    _stage_arguments(p)
    p.add_argument("--arch", default="MicroDiT_XL_2")
    p.add_argument("--device", default="auto")
    p.add_argument("--attention-backend", action="append", choices=sorted(SDPA_BACKENDS),
                   help="SDPA backend; repeat (default: all; 'default' is PyTorch's own pick)")
    p.add_argument("--dispatch", action="append", choices=ExpertChoiceMoE.DISPATCHES, help="repeat (default: both)")
    p.add_argument("--compile-moe", action="store_true", help="also time the MoE layers compiled (one graph each)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per shape after one untimed (default 10)")
    p.set_defaults(func=run_layers)

    p = modes.add_parser("loader", help="time the training data loader over MDS shards (synthetic paper-layout "
                                        "ones unless --datadir)")
    p.add_argument("--datadir", help="MDS shards with caption_latents and latents_<resolution>")
    p.add_argument("--synthetic-dir", help="where synthetic shards are written when no --datadir, kept for the next "
                                          "run (default results/bench/loader_shards_<resolution>px)")
    p.add_argument("--samples", type=int, default=4096, help="synthetic samples to write (default 4096)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, action="append", help="loader workers; repeat (default 2)")
    p.add_argument("--batches", type=int, default=10, help="timed batches (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    p.set_defaults(func=run_loader)

    p = modes.add_parser("suite", help="the prepared GPU run: every stage and variant, one process each, in a "
                                       "time budget (docs/benchmarks.md)")
    p.add_argument("--out", required=True, help="JSON lines file; results are appended as they come")
    p.add_argument("--budget-s", type=float, default=480, help="wall-clock seconds for the whole suite")
    p.add_argument("--log", help="append each item's stderr here (warnings, why a compile failed)")
    p.add_argument("--arch", default="MicroDiT_XL_2")
    p.add_argument("--device", default="auto")
    p.add_argument("--card", choices=("auto", *CARD_FITS), default="auto",
                   help="which card's microbatches and checkpointing to use (auto: by the GPU's memory)")
    p.add_argument("--items", default="1-",
                   help="which items of the list to run, 1-based: e.g. 7,9- (a second call runs what the first "
                        "skipped; default: all)")
    p.set_defaults(func=run_suite_command)


def _device(args) -> torch.device:
    from microdit.sampling import pick_device

    return pick_device(args.device)


def _header(args, device: torch.device, **extra) -> dict:
    return {"arch": args.arch, **extra, **asdict(_options(args)), "device": _device_name(device),
            "torch": torch.__version__}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _emit(record: dict) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)


def run_train(args) -> None:
    from microdit.train.metrics import peak_flops

    device = _device(args)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
    for stage_id in args.stage or sorted(STAGES):
        stage = STAGES[stage_id]
        microbatch = args.microbatch or stage.microbatch
        measured = time_training_step(args.arch, stage, microbatch, _options(args), args.steps, args.warmup, device,
                                      args.profile)
        flops = training_flops_per_image(stage_config(args.arch, stage), stage)
        img_per_s = microbatch / measured["step_s"]
        record = {**_header(args, device, stage=stage_id, microbatch=microbatch),
                  "dtype": "bf16-autocast" if device.type == "cuda" else "fp32", **measured,
                  "img_per_s": img_per_s, "train_gflops_per_img": flops / 1e9,
                  "mfu": flops * img_per_s / peak if peak else None}
        if args.predict_memory:
            record["predicted_peak_gib"] = predicted_memory(args.arch, stage, microbatch, _options(args))["peak_gib"]
        _emit(record)


def run_memory(args) -> None:
    if args.compile != "none":
        raise UserError("bench memory predicts eager steps only (the compiler cannot run on fake tensors under "
                        "the byte counter); drop --compile")
    for stage_id in args.stage or sorted(STAGES):
        stage = STAGES[stage_id]
        microbatch = args.microbatch or stage.microbatch
        options = _options(args)
        extra = {}
        if args.fit_gib:
            blocks, fits, prediction = fit_checkpointing(args.arch, stage, microbatch, options, args.fit_gib)
            options = replace(options, checkpoint_blocks=blocks)
            extra = {"fit_gib": args.fit_gib, "fits": fits}
        else:
            prediction = predicted_memory(args.arch, stage, microbatch, options)
        _emit({"arch": args.arch, "stage": stage_id, "microbatch": microbatch, **asdict(options),
               "torch": torch.__version__, **prediction, **extra})


def run_sample(args) -> None:
    from microdit.bench.sampling import time_sampling

    device = _device(args)
    for resolution in args.resolution or (256, 512):
        measured = time_sampling(args.arch, resolution, args.batch, args.steps, args.guidance, args.precision,
                                 args.state_dtype, _options(args), args.repeats, device)
        _emit({**_header(args, device, resolution=resolution, batch=args.batch, steps=args.steps,
                         guidance=args.guidance, precision=args.precision, state_dtype=args.state_dtype),
               **measured})


def run_layers(args) -> None:
    from microdit.bench.layers import recorded_layer_calls, time_attention, time_moe

    device = _device(args)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    header = {"arch": args.arch, "device": _device_name(device), "torch": torch.__version__, "dtype": str(dtype)[6:]}
    for stage_id in args.stage or sorted(STAGES):
        stage = STAGES[stage_id]
        microbatch = args.microbatch or stage.microbatch
        attention, moe = recorded_layer_calls(args.arch, stage, microbatch)
        where = {**header, "stage": stage_id, "microbatch": microbatch}
        for backend in args.attention_backend or SDPA_BACKENDS:
            _emit({**where, "layer": "attention", "backend": backend,
                   **time_attention(attention, backend, dtype, device, args.repeats)})
        for compiled in (False, True) if args.compile_moe else (False,):
            for dispatch in args.dispatch or ExpertChoiceMoE.DISPATCHES:
                _emit({**where, "layer": "moe", "dispatch": dispatch, "compiled": compiled,
                       **time_moe(moe, dispatch, dtype, device, args.repeats, "inductor" if compiled else None)})


def run_loader(args) -> None:
    from microdit.bench.loader import time_loader, write_synthetic_shards

    synthetic_dir = args.synthetic_dir or f"results/bench/loader_shards_{args.resolution}px"
    datadir = args.datadir or write_synthetic_shards(synthetic_dir, args.samples, args.resolution)
    for workers in args.workers or [2]:
        measured = time_loader(datadir, args.resolution, args.batch, workers, args.batches, args.warmup)
        _emit({"datadir": str(datadir), "resolution": args.resolution, "batch": args.batch, "workers": workers,
               "torch": torch.__version__, **measured})


def run_suite_command(args) -> None:
    from microdit.bench.suite import card_class, gpu_memory_gib, paper_suite, run_suite, select_items

    card = card_class(gpu_memory_gib()) if args.card == "auto" else args.card
    items = select_items(paper_suite(card), args.items)
    counts = run_suite(items, args.out, args.budget_s, ["--arch", args.arch, "--device", args.device], log=args.log)
    print(json.dumps({"suite": args.out, "card": card, **counts}))
