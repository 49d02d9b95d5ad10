"""`microdit <command>`: one entry point for every step a Snakemake rule or a user runs.

Each command module exposes register(subparsers), adding its parser with set_defaults(func=handler);
a handler returns an exit status (None = 0). UserError, and a full disk met by any command, become a one-line
message and exit status 2.
"""
import argparse
import importlib
import importlib.metadata
import os
import sys

from microdit.errors import FULL_DISK, UserError

# the module that registers each command: a command imports its own module only, so that the light ones (download,
# convert, report, ...) do not pay for torch's import (seconds) at every start
COMMANDS = {
    "sample": "microdit.commands.sample",
    "checkpoint": "microdit.commands.checkpoint_info",
    "bench": "microdit.bench.command",
    **dict.fromkeys(("download", "convert", "precompute", "merge-parts"), "microdit.data.commands"),
    "train-vae": "microdit.tiny_vae",
    "train-clip": "microdit.tiny_clip",
    "score-shapes": "microdit.eval.score_shapes",
    "reference-images": "microdit.eval.reference_images",
    "report": "microdit.report.command",
    "train": "microdit.train.commands",
    **dict.fromkeys(("eval-captions", "generate", "merge-samples", "fid-stats", "fid", "clip-score", "geneval-metadata",
                     "geneval-generate", "geneval-summary"), "microdit.eval.commands"),
    "unlock-stale": "microdit.snakemake_lock",
    "plan": "microdit.plan",
}


# a worked example per command, shown at the end of its --help (paths as the tiny preset's run lays them out)
EXAMPLES = {
    "sample": "microdit sample --checkpoint results/tiny/train/stage4/ema.safetensors "
              "--prompt 'two red circles left of a blue square on a white background' --out grid.png",
    "checkpoint": "microdit checkpoint info results/tiny/train/stage4/final.safetensors",
    "checkpoint info": "microdit checkpoint info dit_4_channel_37M_real_and_synthetic_data.pt",
    "bench": "microdit bench train --stage config/stages/paper/stage1.yaml --steps 20",
    "bench train": "microdit bench train --stage config/stages/paper/stage1.yaml --set compile=model --steps 20",
    "bench memory": "microdit bench memory --stage config/stages/paper/stage3.yaml --fit-gib 70",
    "bench sample": "microdit bench sample --batch 32",
    "bench layers": "microdit bench layers --attention-backend flash --attention-backend efficient",
    "bench loader": "microdit bench loader --workers 2 --workers 8",
    "bench suite": "microdit bench suite --out docs/bench-runs/new-run.jsonl --budget-s 480",
    "download": "microdit download synthetic --out /tmp/shapes --num-samples 64",
    "download cc12m": "microdit download cc12m --url-list cc12m.tsv --out data/cc12m --subset small",
    "download sa1b": "microdit download sa1b --links sa1b_links.txt --captions data/sa1b-captions --out data/sa1b",
    "download textcaps": "microdit download textcaps --out data/textcaps",
    "download jdb": "HF_TOKEN=... microdit download jdb --split train --out data/jdb --subset small",
    "download diffdb": "microdit download diffdb --out data/diffdb --subset small",
    "download coco2014": "microdit download coco2014 --out data/coco2014",
    "download synthetic": "microdit download synthetic --out /tmp/shapes --num-samples 64 --seed 1",
    "convert": "microdit convert --input /tmp/shapes --out /tmp/shapes-mds --min-side 64 --resize-to 64",
    "precompute": "microdit precompute --input /tmp/shapes-mds --out /tmp/shapes-latents "
                  "--vae results/store/vae/vae-<digest> --text-encoder minilm --resolutions 32 64",
    "merge-parts": "microdit merge-parts --out results/store/latents/sa1b-<digest> part-0 part-1",
    "train-vae": "microdit train-vae --input /tmp/shapes-mds --out /tmp/vae --resolutions 32 64 --steps 200",
    "train-clip": "microdit train-clip --input /tmp/shapes-mds --out /tmp/clip --resolutions 32 64 --steps 150",
    "train": "microdit train --config config/stages/tiny/stage1.yaml --set steps=20 --set launch.cluster=debug",
    "eval-captions": "microdit eval-captions --source data/coco2014 --out captions.jsonl --num 30000",
    "reference-images": "microdit reference-images --source data/coco2014 --captions captions.jsonl "
                        "--resolution 256 --vae stabilityai/sdxl-vae --out reference/256px/vae",
    "generate": "microdit generate --captions captions.jsonl --checkpoint results/paper/train/stage4/ema.safetensors "
                "--out samples/",
    "merge-samples": "microdit merge-samples --part eval/sample_parts/0 --part eval/sample_parts/1 --out eval/samples",
    "fid-stats": "microdit fid-stats --images data/coco2014 --out coco_256.npz --resolution 256 --halves halves.json",
    "fid": "microdit fid --samples samples/ --reference-stats coco_256.npz --out fid.json",
    "clip-score": "microdit clip-score --samples samples/ --captions captions.jsonl --out clip.json "
                  "--model local-dir:results/tiny/eval/clip_model --pretrained ''",
    "geneval-metadata": "microdit geneval-metadata --out evaluation_metadata.jsonl",
    "geneval-generate": "microdit geneval-generate --metadata evaluation_metadata.jsonl --checkpoint ema.safetensors "
                        "--out geneval/",
    "geneval-summary": "microdit geneval-summary --results geneval/results.jsonl --out geneval.json",
    "score-shapes": "microdit score-shapes --captions results/tiny/eval/captions.jsonl "
                    "--samples results/tiny/eval/samples --out results/tiny/eval/shapes/samples.json",
    "report": "microdit report --out report.html --stages stage1 "
              "--metrics stage1=results/tiny/train/stage1/metrics.jsonl",
    "unlock-stale": "microdit unlock-stale -- --profile profiles/local --configfile config/tiny.yaml",
    "plan": "microdit plan --configfile config/paper.yaml --gpu H100",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command's module, or of all of them (help, an unknown command)."""
    parser = argparse.ArgumentParser(prog="microdit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"microdit {importlib.metadata.version('microdit')}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values()):
        importlib.import_module(name).register(subparsers)
    describe(subparsers)
    return parser


class ExampleFormatter(argparse.HelpFormatter):
    """Wraps the description as usual but keeps the example's lines as they are (a command line wrapped is wrong)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def commands_of(subparsers) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """name -> (parser, its one-line help) of each command under a subparsers action."""
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}  # argparse keeps them only here
    return {name: (parser, helps.get(name) or "") for name, parser in subparsers.choices.items()}


def describe(subparsers, path: str = "") -> None:
    """Give every command's --help a description (its one-line help where it has none) and its example."""
    for name, (parser, help_text) in commands_of(subparsers).items():
        key = f"{path}{name}"
        parser.description = parser.description or help_text[:1].upper() + help_text[1:] + "."
        if key in EXAMPLES:
            parser.epilog = f"example:\n  {EXAMPLES[key]}"
            if parser.formatter_class is argparse.HelpFormatter:
                parser.formatter_class = ExampleFormatter
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                describe(action, f"{key} ")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"microdit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in FULL_DISK:
            raise
        print(f"microdit {args.command}: error: {full_disk(err, args)}", file=sys.stderr)
        return 2


def full_disk(err: OSError, args) -> str:
    """A full disk or quota, whichever step's write met it, as the cause and the path: the file when the error
    names it (open, rename), else the command's output (a write to an open file names none)."""
    where = err.filename or getattr(args, "out", None) or "the output"
    return f"{where}: {os.strerror(err.errno).lower()}; free some space there (or write elsewhere) and rerun"


if __name__ == "__main__":
    sys.exit(main())
