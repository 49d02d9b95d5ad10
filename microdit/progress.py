"""Progress of long steps: tqdm's bar on a terminal; in a log (SLURM, Snakemake, submitit) one line of the same
text (count, rate, ETA) every MICRODIT_PROGRESS_EVERY seconds (30 by default), where a redrawn bar would be one
endless line of carriage returns."""
import os
import re
import sys
from typing import IO, Iterable

from tqdm import tqdm

from microdit.errors import UserError

EVERY_ENV = "MICRODIT_PROGRESS_EVERY"


class LogLines:
    """A file for tqdm that writes each redraw as a line of its own (tqdm starts a redraw with a carriage return),
    leaving out a redraw of the same count as the last line's (closing redraws the last count with another rate)."""

    def __init__(self, stream: IO[str]):
        self.stream, self.last_count = stream, None

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        # "desc:  40%| 4/10" from "desc:  40%|####      | 4/10 [elapsed<left, rate]": the bar's width varies with
        # the length of the rate, so a count's closing redraw may draw another bar
        count = re.sub(r"\|.*\|", "|", line.rsplit(" [", 1)[0])
        if line and count != self.last_count:
            self.stream.write(line + "\n")
            self.last_count = count

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
    # miniters=1: each update checks the clock, and tqdm's monitor thread (which redraws a bar whose dynamic miniters
    # grew) stays out, so lines come `every` seconds apart
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=LogLines(stream), mininterval=every, miniters=1,
                ncols=100, ascii=True, **options)
