"""`python -m microdit.bench MODE ...`: the bench command on its own. It needs only torch and numpy, not the data,
workflow or evaluation stack, so it runs on a GPU machine that has PyTorch but none of this package's other pins."""
import argparse
import sys

from microdit.bench.command import add_modes
from microdit.errors import UserError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m microdit.bench",
                                     description="microdit bench on its own (needs only torch and numpy)")
    add_modes(parser)
    args = parser.parse_args()
    try:
        sys.exit(int(args.func(args) or 0))
    except UserError as err:
        print(f"python -m microdit.bench: error: {err}", file=sys.stderr)
        sys.exit(2)
