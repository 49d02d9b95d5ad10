"""`microdit bench MODE`: speed and memory at the shapes and settings of stage configs, one JSON line per
measurement. Stage configs are read as `microdit train` reads them, `--set` overrides included; the default ones,
the paper's (config/stages/paper/), are found from the repository root. Timings belong in docs/benchmarks.md,
never in tests.
"""
import argparse
import json
from dataclasses import asdict, replace

import torch

from microdit.bench.suite import CARD_FITS, PAPER_STAGE
from microdit.models.layers import SDPA_BACKENDS, ExpertChoiceMoE

PAPER_STAGES = [PAPER_STAGE.format(number) for number in (1, 2, 3, 4)]
LAYER_REPEATS = 10  # timed calls per shape, after one untimed


def _stage_arguments(p, default: list[str] = PAPER_STAGES, device: bool = True) -> None:
    p.add_argument("--stage", action="append", metavar="YAML",
                   help=f"a stage config; repeat for several (default: {' '.join(default)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a field of every stage config, as `microdit train --set` does (e.g. "
                        "compile=blocks, micro_batch=128, moe_dispatch=one_hot, model.arch=MicroDiT_Nano_2)")
    p.set_defaults(default_stages=default)
    if device:
        p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, ...")


def register(subparsers) -> None:
    add_modes(subparsers.add_parser("bench", help="speed and memory at stage configs' shapes (JSON lines)",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


def add_modes(bench) -> None:
    modes = bench.add_subparsers(dest="mode", required=True, metavar="MODE")

    p = modes.add_parser("train", help="time the trainer's step at each stage config")
    _stage_arguments(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps, after 3 untimed (default 10)")
    p.add_argument("--profile", action="store_true",
                   help="also print where three profiled steps spend the device's time (by kind of kernel, by kernel)")
    p.set_defaults(func=run_train)

    p = modes.add_parser("memory", help="predict the eager step's peak memory without running it (any machine)")
    _stage_arguments(p, device=False)
    p.add_argument("--fit-gib", type=float, help="find the fewest checkpoint_blocks whose predicted peak fits this "
                                                 "many GiB (leave a margin for the allocator: see docs/benchmarks.md)")
    p.set_defaults(func=run_memory)

    p = modes.add_parser("sample", help="time the stage's sampler with classifier-free guidance")
    _stage_arguments(p, default=[PAPER_STAGES[0], PAPER_STAGES[2]])  # 256 and 512 px
    p.add_argument("--batch", type=int, default=64, help="images sampled at once (default 64)")
    p.add_argument("--state-dtype", choices=("fp32", "fp64"), default="fp32", help="dtype of the sampler's x")
    p.set_defaults(func=run_sample)

    p = modes.add_parser("layers", help="time the step's attention calls per SDPA backend and MoE layers per "
                                        "dispatch, forward + backward, at each stage's shapes")
    _stage_arguments(p)
    p.add_argument("--attention-backend", action="append", choices=sorted(SDPA_BACKENDS),
                   help="SDPA backend; repeat (default: all; 'default' is PyTorch's own pick)")
    p.add_argument("--dispatch", action="append", choices=ExpertChoiceMoE.DISPATCHES, help="repeat (default: both)")
    p.set_defaults(func=run_layers)

    p = modes.add_parser("loader", help="time the training data loader over MDS shards (synthetic paper-layout "
                                        "ones unless --datadir)")
    p.add_argument("--datadir", help="MDS shards with caption_latents and latents_<resolution>")
    p.add_argument("--samples", type=int, default=4096, help="synthetic samples to write (default 4096), kept in "
                                                             "results/bench/ for the next run")
    p.add_argument("--resolution", type=int, default=256, help="the latents_<resolution> column read (default 256)")
    p.add_argument("--batch", type=int, default=256, help="samples per batch (default 256)")
    p.add_argument("--workers", type=int, action="append", help="loader workers; repeat (default 2)")
    p.set_defaults(func=run_loader)

    p = modes.add_parser("suite", help="the prepared GPU run: paper stages and variants, one process each, in a "
                                       "time budget (docs/benchmarks.md)")
    p.add_argument("--out", required=True, help="JSON lines file; results are appended as they come")
    p.add_argument("--budget-s", type=float, default=480, help="wall-clock seconds for the whole suite")
    p.add_argument("--log", help="append each item's stderr here (warnings, why a compile failed)")
    p.add_argument("--card", choices=CARD_FITS, default="h200", help="the card's microbatches and fits")
    p.add_argument("--items", default="1-",
                   help="which items of the list to run, 1-based: e.g. 7,9- (a second call runs what the first "
                        "skipped; default: all)")
    p.set_defaults(func=run_suite_command)


def _stages(args) -> list:
    """(path, StageConfig) of every stage named, all read before anything is measured."""
    from microdit.train.config import load_stage_config

    return [(path, load_stage_config(path, args.overrides)) for path in args.stage or args.default_stages]


def _device(args) -> torch.device:
    from microdit.sampling import pick_device

    return pick_device(args.device)


def _header(path: str, cfg, device: torch.device | None = None) -> dict:
    where = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"} if device else {}
    return {"stage": path, "arch": cfg.model.arch, "microbatch": cfg.micro_batch, "precision": cfg.precision,
            **asdict(cfg.speed_options()), **where, "torch": torch.__version__}


def _emit(record: dict) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)


def run_train(args) -> None:
    from microdit.bench.timing import time_training, training_flops_per_image
    from microdit.train.metrics import peak_flops

    device = _device(args)
    peak = peak_flops(device)
    for path, cfg in _stages(args):
        measured = time_training(cfg, device, args.steps, args.profile)
        flops = training_flops_per_image(cfg)
        img_per_s = cfg.micro_batch / measured["step_s"]
        _emit({**_header(path, cfg, device), **measured, "img_per_s": img_per_s, "train_gflops_per_img": flops / 1e9,
               "mfu": flops * img_per_s / peak if peak else None})


def run_memory(args) -> None:
    from microdit.bench.timing import eager, fit_checkpointing, predicted_memory

    for path, cfg in _stages(args):
        extra = {}
        if args.fit_gib:
            blocks, fits, prediction = fit_checkpointing(cfg, args.fit_gib)
            cfg = replace(cfg, checkpoint_blocks=blocks)
            extra = {"fit_gib": args.fit_gib, "fits": fits}
        else:
            prediction = predicted_memory(cfg)
        _emit({**_header(path, eager(cfg)), **prediction, **extra})


def run_sample(args) -> None:
    from microdit.bench.timing import time_sampling

    device = _device(args)
    for path, cfg in _stages(args):
        measured = time_sampling(cfg, args.batch, args.state_dtype, device)
        _emit({**_header(path, cfg, device), "resolution": 8 * cfg.model.latent_res,  # the VAE's 8 px a latent
               "batch": args.batch, "steps": cfg.samples.steps, "guidance": cfg.samples.guidance_scale,
               "state_dtype": args.state_dtype, **measured})


def run_layers(args) -> None:
    from microdit.bench.layers import recorded_layer_calls, time_attention, time_moe

    device = _device(args)
    for path, cfg in _stages(args):
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        attention, moe = recorded_layer_calls(cfg)
        where = _header(path, cfg, device)
        for backend in args.attention_backend or SDPA_BACKENDS:
            measured = time_attention(attention, backend, dtype, device, LAYER_REPEATS)
            _emit({**where, "layer": "attention", "backend": backend, **measured})
        for dispatch in args.dispatch or ExpertChoiceMoE.DISPATCHES:
            measured = time_moe(moe, dispatch, dtype, device, LAYER_REPEATS)
            _emit({**where, "layer": "moe", "dispatch": dispatch, **measured})


def run_loader(args) -> None:
    from microdit.bench.loader import time_loader, write_synthetic_shards

    synthetic_dir = f"results/bench/loader_shards_{args.resolution}px"
    datadir = args.datadir or write_synthetic_shards(synthetic_dir, args.samples, args.resolution)
    for workers in args.workers or [2]:
        measured = time_loader(datadir, args.resolution, args.batch, workers)
        _emit({"datadir": str(datadir), "resolution": args.resolution, "batch": args.batch, "workers": workers,
               "torch": torch.__version__, **measured})


def run_suite_command(args) -> None:
    from microdit.bench.suite import paper_suite, run_suite, select_items

    counts = run_suite(select_items(paper_suite(args.card), args.items), args.out, args.budget_s, log=args.log)
    print(json.dumps({"suite": args.out, "card": args.card, **counts}))
