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
    **dict.fromkeys(("download", "convert", "precompute"), "microdit.data.commands"),
    "train-vae": "microdit.tiny_vae",
    "score-shapes": "microdit.eval.score_shapes",
    "train": "microdit.train.commands",
    **dict.fromkeys(("eval-captions", "generate", "fid-stats", "fid", "clip-score", "geneval-metadata",
                     "geneval-generate", "geneval-summary", "report"), "microdit.eval.commands"),
    "unlock-stale": "microdit.snakemake_lock",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command's module, or of all of them (help, an unknown command)."""
    parser = argparse.ArgumentParser(prog="microdit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"microdit {importlib.metadata.version('microdit')}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values()):
        importlib.import_module(name).register(subparsers)
    return parser


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
