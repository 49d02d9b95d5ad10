"""`microdit report`: the run's report.html from the files the workflow names, each given as NAME=PATH."""
import json
from pathlib import Path

from microdit.arguments import non_negative_float, positive_int
from microdit.errors import UserError


def parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Path]:
    """['stage1=path', ...] -> {'stage1': Path('path')}."""
    result = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(f"{option} {pair!r}: expected NAME=PATH")
        result[name] = Path(path)
    return result


# option -> (ReportInputs field, what NAME names, what PATH is)
PAIRED = {
    "--metrics": ("metrics", "STAGE", "a stage's metrics JSONL"),
    "--train-stats": ("train_stats", "STAGE", "a stage's train_stats.json"),
    "--grid": ("grids", "STAGE", "a stage's sample grid PNG"),
    "--stage-config": ("stage_configs", "STAGE", "a stage's resolved stage.yaml"),
    "--fid": ("fid", "STAGE", "fid.json of an evaluated stage (FID or the Fréchet distance)"),
    "--clip": ("clip", "STAGE", "clip.json of an evaluated stage"),
    "--clip-floor": ("clip_floor", "STAGE", "clip.json of the stage's shuffled-caption samples"),
    "--clip-ceiling": ("clip_ceiling", "LABEL", "clip.json of a ceiling (reference images, VAE reconstructions)"),
    "--geneval": ("geneval", "STAGE", "geneval.json of an evaluated stage"),
    "--fd-context": ("fd_context", "LABEL", "a Fréchet distance to read the stages' against (reference halves, "
                                            "VAE reconstructions): fid-stats --halves or fid output"),
    "--shapes": ("shapes", "STAGE", "score-shapes summary of an evaluated stage's samples"),
    "--shapes-floor": ("shapes_floor", "STAGE", "score-shapes summary of the stage's shuffled-caption samples"),
    "--shapes-ceiling": ("shapes_ceiling", "LABEL", "score-shapes summary of a ceiling (reference images, VAE "
                                                    "reconstructions)"),
    "--eval-samples": ("eval_samples", "STAGE", "an evaluated stage's samples folder (merged)"),
}


def register(subparsers) -> None:
    from microdit.report.ledger import PAPER_PRICE_PER_GPU_HOUR

    p = subparsers.add_parser("report", help="self-contained report.html of a run",
                              description="Writes one self-contained HTML page of a run: curves, sample grids, the "
                                          "evaluated stages' scores side by side, labelled samples beside their "
                                          "reference images, the cost ledger and the provenance of each number.")
    p.add_argument("--out", required=True, help="report.html to write")
    p.add_argument("--title", default="MicroDiT run", help="the page's heading")
    p.add_argument("--stages", nargs="+", required=True, help="stage names, in order")
    for option, (_, name, what) in PAIRED.items():
        p.add_argument(option, action="append", metavar=f"{name}=PATH", help=f"{what} (repeatable)")
    p.add_argument("--eval-captions", help="the evaluation's caption JSONL: the labels of the samples' grid")
    p.add_argument("--grid-reference", help="folder of the captions' reference images (reference-images), shown "
                                            "beside the samples")
    p.add_argument("--grid-captions", type=positive_int, default=8,
                   help="how many captions' samples the grid shows (default 8)")
    p.add_argument("--sample-prompt", action="append", default=[], metavar="TEXT",
                   help="a prompt of the sample grids, in grid order (repeatable)")
    p.add_argument("--price-per-gpu-hour", type=non_negative_float, default=PAPER_PRICE_PER_GPU_HOUR,
                   help=f"dollars per GPU-hour for the ledger (default: the paper's {PAPER_PRICE_PER_GPU_HOUR})")
    p.set_defaults(func=run)


def run(args) -> None:
    from microdit.report.report import ReportInputs, write_report

    paired = {field: parse_pairs(getattr(args, option[2:].replace("-", "_")), option)
              for option, (field, _, _) in PAIRED.items()}
    inputs = ReportInputs(title=args.title, stages=args.stages, sample_prompts=args.sample_prompt,
                          eval_captions=args.eval_captions, grid_reference=args.grid_reference,
                          grid_captions=args.grid_captions, price_per_gpu_hour=args.price_per_gpu_hour, **paired)
    write_report(inputs, args.out)
    print(json.dumps({"out": args.out}))
