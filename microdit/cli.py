"""`microdit <command>`: one entry point for every step a Snakemake rule or a user runs.

Each command module exposes register(subparsers), adding its parser with set_defaults(func=handler);
a handler returns an exit status (None = 0). UserError becomes a one-line message and exit status 2.
"""
import argparse
import importlib
import sys

from microdit.errors import UserError

COMMAND_MODULES = (
    "microdit.commands.sample",
    "microdit.commands.checkpoint_info",
    "microdit.bench.command",
    "microdit.data.commands",
    "microdit.tiny_vae",
    "microdit.train.commands",
    "microdit.eval.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microdit", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"microdit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
