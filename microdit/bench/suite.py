"""`microdit bench suite`: the prepared GPU run — every stage and variant of docs/benchmarks.md in one call.

Each measurement runs in its own process (an out-of-memory or a crash costs that line only, and the allocator
starts clean), in priority order, within a wall-clock budget: what did not fit is recorded as skipped. Each result
is appended to the output file as one complete JSON line the moment it exists, so a run killed at its time limit
keeps everything measured so far.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from microdit.errors import UserError
from microdit.train.config import load_stage_config

PAPER_STAGE = "config/stages/paper/stage{}.yaml"
# Per class of card and stage, with the stage's low-precision norms: (microbatch, the compiler's activation budget
# or None, checkpointed blocks). The blocks are the fewest whose eager peak `bench memory --fit-gib` predicts within
# reach (an H200 holds 106 GiB predicted, an 80 GB H100 72 GiB; predictions held to 0.3 GiB on the H200). The
# budgets are fractions guessed from those predictions for a like peak (a compiled step kept about 0.9 of the eager
# activations so far); the H200's ran in run 4 (10.7 % faster than 12 blocks at stage 4), the H100's are untried.
CARD_FITS = {"h200": {1: (256, None, 0), 2: (256, 0.7, 12), 3: (128, None, 0), 4: (64, 0.7, 12)},
             "h100": {1: (256, None, 0), 2: (256, 0.5, 22), 3: (128, 0.6, 6), 4: (64, 0.5, 21)}}
# The authors' configuration at their microbatch (82.5 GiB on an H200) does not fit an 80 GB card: half of it does.
BASELINE_MICROBATCH = {"h200": 256, "h100": 128}
MIN_ITEM_S = 20.0  # below this much budget an item cannot even build the model: record it as skipped


def _settings(*settings: str) -> list[str]:
    return [arg for setting in settings for arg in ("--set", setting)]


def paper_suite(card: str) -> tuple:
    """(label, `microdit bench` arguments) for `card`, most important first (docs/benchmarks.md says what runs 1-5
    settled)."""
    fits = CARD_FITS[card]

    def train(number: int, suffix: str = "", *extra: str, blocks: bool = False) -> tuple:
        """Stage `number` at the card's microbatch, fitted by its activation budget (or by checkpointed blocks)."""
        microbatch, budget, count = fits[number]
        if budget and not blocks:
            fit, label = [f"activation_budget={budget}"], f" budget{budget}"
        else:
            fit, label = ([f"checkpoint_blocks={count}"], f" ckpt{count}") if count else ([], "")
        return (f"s{number} mb{microbatch}{label}{suffix}",
                ["train", "--stage", PAPER_STAGE.format(number), *_settings(f"micro_batch={microbatch}", *fit), *extra])

    one_hot = _settings("moe_dispatch=one_hot")
    authors = _settings(f"micro_batch={BASELINE_MICROBATCH[card]}", "compile=none", "low_precision_norm=false",
                        "moe_dispatch=one_hot")

    def layers(microbatch: int) -> tuple:  # the stages trained at this microbatch on this card, in one process
        numbers = [n for n, (m, _, _) in sorted(fits.items()) if m == microbatch]
        return (f"layers s{'-'.join(map(str, numbers))} mb{microbatch}",
                ["layers", *(f"--stage={PAPER_STAGE.format(n)}" for n in numbers),
                 *_settings(f"micro_batch={microbatch}")])

    return (
        train(1, " profiled", "--profile"),
        train(2, " one-hot", *one_hot),
        (f"s1 authors-config mb{BASELINE_MICROBATCH[card]}", ["train", "--stage", PAPER_STAGE.format(1), *authors]),
        *(train(number, " one-hot", *one_hot) for number in (1, 4)),
        train(2, " profiled", "--profile"),
        ("sample 256px as generate", ["sample", "--stage", PAPER_STAGE.format(1), "--batch", "128",
                                      *_settings("compile=blocks", "low_precision_norm=false")]),
        train(3),
        train(1, " flash", *_settings("attention_backend=flash")),
        *(train(number, blocks=True) for number, (_, budget, count) in sorted(fits.items()) if budget and count),
        *(train(number, " whole-model", *_settings("compile=model")) for number in (2, 3, 4)),
        *(layers(microbatch) for microbatch in sorted({m for m, _, _ in fits.values()}, reverse=True)),
    )


def expected_seconds(args: list[str]) -> float:
    """Roughly how long an item takes on an H200 machine (runs 1-4: process start, model build, FLOP count,
    compiling, warm-up, timing): an item is started only while the budget still holds this much, so that a
    long one left for a second call does not time out half-way and cost the shorter ones after it."""
    if args[0] not in ("train", "sample"):
        return 30.0 if args[0] == "layers" else MIN_ITEM_S
    options = dict(zip(args, args[1:]))  # the stage config, as the item will read it
    stage = load_stage_config(options["--stage"], [value for flag, value in zip(args, args[1:]) if flag == "--set"])
    return {"none": 45.0, "blocks": 240.0, "model": 300.0}[stage.compile] + (10.0 if "--profile" in args else 0.0)


def select_items(items, spec: str):
    """The items a 1-based selection names: "7", "2-5", "9-" (to the end), comma-separated ("3,7,9-")."""
    chosen = set()
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            start = int(first)
            stop = (int(last) if last else len(items)) if dash else start
        except ValueError:
            raise UserError(f"--items: expected numbers like 3,7,9- ; got {spec!r}") from None
        if not 1 <= start <= stop <= len(items):
            raise UserError(f"--items: {part!r} is outside 1-{len(items)}")
        chosen.update(range(start, stop + 1))
    return [item for number, item in enumerate(items, 1) if number in chosen]


def run_suite(items, out: Path, budget_s: float, python: str = sys.executable, log: Path | None = None) -> dict:
    """Run `items` within `budget_s` seconds, appending one JSON line per result to `out` (and each item's stderr
    to `log`, which says why a compile failed); counts by outcome."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    counts = {"measured": 0, "failed": 0, "skipped": 0}
    for label, args in items:
        remaining = deadline - time.monotonic()
        needed = max(MIN_ITEM_S, expected_seconds(args))
        if remaining < needed:
            _append(out, {"label": label, "args": args,
                          "skipped": f"time budget: {remaining:.0f} s left, the item takes about {needed:.0f} s"})
            counts["skipped"] += 1
            continue
        for record in _run_item(python, args, remaining, label, log):
            _append(out, {"label": label, **record})
            counts["failed" if "error" in record else "measured"] += 1
    return counts


def _run_item(python: str, args: list[str], timeout_s: float, label: str, log: Path | None) -> list[dict]:
    try:
        done = _run_group([python, "-m", "microdit.cli", "bench", *args], timeout_s)
    except subprocess.TimeoutExpired as timeout:
        _append_log(log, label, timeout.stderr)
        return [{"args": args, "error": f"timed out after {timeout_s:.0f} s (time budget)"}]
    _append_log(log, label, done.stderr)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        error = next((line for line in reversed(lines) if "OutOfMemoryError" in line), lines[-1])
        records.append({"args": args, "error": error[-500:], "returncode": done.returncode})
    return records


def _run_group(command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """subprocess.run, but a timeout kills the item's whole process group: the compiler's workers outlive it."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(command, timeout_s, stdout, stderr) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
    print(json.dumps(record), flush=True)


def _append_log(log: Path | None, label: str, stderr: str) -> None:
    if log is None or not stderr:
        return
    with Path(log).open("a") as f:
        f.write(f"===== {label}\n{stderr[-20000:]}\n")
