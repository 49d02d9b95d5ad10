"""`microdit plan --configfile CONFIG`: what a workflow config will take before it runs. Per training stage and for
the evaluation's sampling: the GPU-hours, the wall-clock on the GPUs its job is given and the dollars at
`report.price_per_gpu_hour`.

Training: steps x global batch images, each costing the training FLOPs that the trainer's counter counts for the
stage's model (torch.utils.flop_counter, one image on the meta device), delivered at the model FLOPs utilisation
measured for that model shape (docs/bench-runs/*-throughput.yaml) times the GPU's dense bf16 peak: on the measured GPU
and shape, the measured img/s. Sampling: the measured sampler img/s at that resolution, scaled by network calls
(2 x steps - 1 for Heun). Assumed, not measured: the ranks of a job scale linearly, another GPU reaches the measured
utilisation, and starts, checkpoints and held-out losses cost nothing.
"""
from dataclasses import dataclass
from pathlib import Path

from microdit.errors import UserError
from microdit.files import read_yaml

THROUGHPUT = Path(__file__).resolve().parents[1] / "docs" / "bench-runs" / "2026-11-27-h200-throughput.yaml"


@dataclass(frozen=True)
class PlanRow:
    name: str
    gpus: int                 # of its job; 0 = a CPU job, not planned
    images: int
    img_per_s: float | None   # per GPU, predicted; None without a measurement of this shape
    price_per_gpu_hour: float
    gpu: str                  # the GPU model it is planned on
    basis: str                # the measurement it rests on, or why there is none

    @property
    def gpu_hours(self) -> float | None:
        return self.images / self.img_per_s / 3600 if self.gpus and self.img_per_s else None

    @property
    def wall_hours(self) -> float | None:
        return None if self.gpu_hours is None else self.gpu_hours / self.gpus

    @property
    def dollars(self) -> float | None:
        return None if self.gpu_hours is None else self.gpu_hours * self.price_per_gpu_hour


def read_throughput(path: str | Path = THROUGHPUT) -> dict:
    data = read_yaml(path, "measured throughput")
    if not isinstance(data, dict) or not {"measured", "training", "sampling"} <= set(data):
        raise UserError(f"{path}: expected the keys measured, training and sampling")
    return data


def peak(gpu: str) -> float:
    from microdit.train.metrics import PEAK_BF16_FLOPS

    if gpu not in PEAK_BF16_FLOPS:
        raise UserError(f"GPU {gpu!r}: no dense bf16 peak known; one of {', '.join(PEAK_BF16_FLOPS)}")
    return PEAK_BF16_FLOPS[gpu]


def training_row(name: str, cfg, throughput: dict, gpu: str, price: float, flops: float | None = None) -> PlanRow:
    """A stage's plan from its resolved stage config; `flops` per image when already counted (train_stats)."""
    m, launch = cfg.model, cfg.launch
    gpus, images = launch.nodes * launch.gpus_per_node, cfg.steps * cfg.global_batch
    shape = (m.arch, m.latent_res, m.train_mask_ratio)
    found = next((t for t in throughput["training"] if (t["arch"], t["latent_res"], t["mask_ratio"]) == shape), None)
    if not gpus or found is None:
        why = "a CPU job" if not gpus else f"no measurement of {m.arch} at {m.latent_res}x{m.latent_res} latents, " \
                                          f"mask ratio {m.train_mask_ratio}"
        return PlanRow(name, gpus, images, None, price, gpu, why)
    measured = throughput["measured"]
    utilisation = found["img_per_s"] * found["gflop_per_image"] * 1e9 / peak(measured["gpu"])
    if not flops:
        from microdit.bench.timing import training_flops_per_image

        flops = training_flops_per_image(cfg)
    return PlanRow(name, gpus, images, utilisation * peak(gpu) / flops, price, gpu,
                   f"{utilisation:.1%} MFU at {flops / 1e9:,.1f} GFLOP/image ({found['route']}; {measured['gpu']}, "
                   f"{found['run']})")


def sampling_row(name: str, arch: str, images: int, resolution: int, steps: int, gpus: int, throughput: dict,
                 gpu: str, price: float) -> PlanRow:
    found = next((s for s in throughput["sampling"] if (s["arch"], s["resolution"]) == (arch, resolution)), None)
    if not gpus or found is None:
        why = "a CPU job" if not gpus else f"no measurement of {arch} sampling at {resolution} px"
        return PlanRow(name, gpus, images, None, price, gpu, why)
    measured = throughput["measured"]
    rate = found["img_per_s"] * (2 * found["steps"] - 1) / (2 * steps - 1) * peak(gpu) / peak(measured["gpu"])
    return PlanRow(name, gpus, images, rate, price, gpu, f"{found['img_per_s']} img/s at {found['steps']} steps "
                                                    f"({found['route']}; {measured['gpu']}, {found['run']})")


def spent_gpu(stats: dict) -> str:
    """The GPU model a stage ran on, as its train_stats' provenance names it (the paper's H100 when it does not)."""
    from microdit.train.metrics import PEAK_BF16_FLOPS

    names = (stats.get("provenance") or {}).get("gpus") or []
    return next((key for name in names[:1] for key in PEAK_BF16_FLOPS if key in name), "H100")


def plan_of_run(stage: str, stage_yaml: str | Path, stats: dict, price: float) -> PlanRow | None:
    """What `microdit plan` predicts for a stage that ran: its resolved stage.yaml, on the GPU it ran on, at the
    FLOPs per image its trainer counted. None where the measurements are not at hand (a package installed without
    its source tree)."""
    from microdit.train.config import load_stage_config

    if not THROUGHPUT.is_file():
        return None
    return training_row(stage, load_stage_config(stage_yaml), read_throughput(), spent_gpu(stats), price,
                        stats.get("flops_per_image"))


def stage_config(config: dict, stage: str, workflow_dir: str):
    """A stage's settings as its job resolves them, with the workflow's model shapes and launch."""
    from microdit.workflow import model_settings, resolve_path, resolved_stage, stage_yaml_problem

    spec = config["stages"][stage]
    path = resolve_path(spec["config"], workflow_dir)
    if problem := stage_yaml_problem(path):
        raise UserError(f"stages.{stage}.config: {path}: {problem}")
    overrides = {**model_settings(config, stage), **{f"launch.{k}": v for k, v in config.get("launch", {}).items()},
                 **spec.get("set", {})}
    return resolved_stage(stage, path, overrides)


def plan(config: dict, workflow_dir: str, throughput: dict, gpu: str) -> list[PlanRow]:
    from microdit.workflow import GENEVAL_PROMPTS

    price = float(config["report"]["price_per_gpu_hour"])
    configs = {stage: stage_config(config, stage, workflow_dir) for stage in config["stages"]}
    rows = [training_row(stage, cfg, throughput, gpu, price) for stage, cfg in configs.items()]
    ev = config["eval"]
    gpus = int(ev.get("gpus", 0))
    for stage in ev["stages"]:  # each evaluated stage samples at its own resolution
        arch, which = configs[stage].model.arch, "" if len(ev["stages"]) == 1 else f" ({stage})"
        draw = (config["stages"][stage]["resolution"], ev["steps"], gpus, throughput, gpu, price)
        rows.append(sampling_row(f"eval: FID images{which}", arch, int(ev["num_captions"]), *draw))
        if "geneval" in ev:
            images = GENEVAL_PROMPTS * int(ev["geneval"].get("images_per_prompt", 4))
            rows.append(sampling_row(f"eval: GenEval images{which}", arch, images, *draw))
    return rows


def total(rows: list[PlanRow]) -> dict:
    planned = [r for r in rows if r.gpu_hours is not None]
    return {"gpu_hours": sum(r.gpu_hours for r in planned), "wall_hours": sum(r.wall_hours for r in planned),
            "dollars": sum(r.dollars for r in planned)}


def hours(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def table(rows: list[PlanRow], gpu: str) -> str:
    lines = [f"{'step':<22}{'GPUs':>5}{'images':>14}{f'img/s/{gpu}':>13}{'GPU-hours':>11}{'wall h':>9}{'dollars':>12}"]
    for r in rows:
        rate = "—" if r.img_per_s is None else f"{r.img_per_s:,.1f}"
        dollars = "—" if r.dollars is None else f"${r.dollars:,.0f}"
        lines.append(f"{r.name:<22}{r.gpus:>5}{r.images:>14,}{rate:>13}{hours(r.gpu_hours):>11}"
                     f"{hours(r.wall_hours):>9}{dollars:>12}")
    t = total(rows)
    lines.append(f"{'total':<22}{'':>5}{'':>14}{'':>13}{t['gpu_hours']:>11,.1f}{t['wall_hours']:>9,.1f}"
                 f"{'$' + format(t['dollars'], ',.0f'):>12}")
    return "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="predicted GPU-hours, wall-clock and dollars of a workflow config",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--configfile", required=True, help="a workflow config, e.g. config/paper.yaml")
    p.add_argument("--gpu", default="H100", help="the GPU model the jobs get (default H100, the paper's)")
    p.add_argument("--throughput", default=str(THROUGHPUT), help="measured throughput (default: %(default)s)")
    p.add_argument("--workflow-dir", default=".", help="where the config's relative paths lie (default: here)")
    p.set_defaults(func=run)


def run(args) -> None:
    config = read_yaml(args.configfile, "config")
    throughput = read_throughput(args.throughput)
    try:
        rows = plan(config, args.workflow_dir, throughput, args.gpu)
    except (KeyError, TypeError) as err:
        raise UserError(f"{args.configfile}: not a workflow config (no key {err}); see docs/config.md") from None
    price = config["report"]["price_per_gpu_hour"]
    print(f"Plan of {args.configfile} on {args.gpu} GPUs at ${price}/GPU-hour, from the throughput measured on one "
          f"{throughput['measured']['device']} ({throughput['measured']['date']}, {args.throughput}):")
    print(table(rows, args.gpu))
    for r in rows:
        print(f"  {r.name}: {r.basis}")
    print("Not planned: downloads, convert and precompute (no measured throughput), starts and restarts. Ranks are "
          "assumed to scale linearly.")
