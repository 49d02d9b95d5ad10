"""Progress of long steps: tqdm's bar on a terminal; in a log (SLURM, Snakemake, submitit) one line of the same
text (count, rate, ETA) every MICRODIT_PROGRESS_EVERY seconds (30 by default), where a redrawn bar would be one
endless line of carriage returns."""
import os
import sys
from typing import IO, Iterable

from tqdm import tqdm

from microdit.errors import UserError

EVERY_ENV = "MICRODIT_PROGRESS_EVERY"


class LogLines:
    """A file for tqdm that writes each redraw as a line of its own (tqdm starts a redraw with a carriage return),
    leaving out a repeat of the last line (closing redraws it)."""

    def __init__(self, stream: IO[str]):
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, *, desc: str, total: float | None = None, unit: str = "it",
             stream: IO[str] | None = None, **options) -> tqdm:
    """A tqdm bar (options as tqdm's) that reports one line every N seconds when `stream` (stderr) is no terminal."""
    stream = stream or sys.stderr
    if stream.isatty():
        return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream, dynamic_ncols=True, **options)
    every = os.environ.get(EVERY_ENV) or "30"
    try:
        every = float(every)
    except ValueError:
        raise UserError(f"{EVERY_ENV}={every!r}: expected seconds between progress lines") from None
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=LogLines(stream), mininterval=every,
                maxinterval=every, ncols=100, ascii=True, **options)
