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
import tempfile
import time
from pathlib import Path

from microdit.errors import UserError

# Microbatch and activation-checkpointed blocks per stage, with low-precision norms, for each class of card: the
# fewest blocks whose eager peak `bench memory --fit-gib` predicts within reach (predictions held to 0.3 GiB on the
# H200; compiled steps keep less). An H200 (140 GiB) holds 106 GiB predicted, an 80 GB H100 72 GiB.
CARD_FITS = {"h200": {1: (256, 0), 2: (256, 12), 3: (128, 0), 4: (64, 12)},
             "h100": {1: (256, 0), 2: (256, 22), 3: (128, 6), 4: (64, 21)}}
# The same microbatches with no checkpointed block and the compiler's activation budget instead (models/speed.py):
# fractions guessed from the eager predictions (a compiled step kept about 0.9 of the eager activations so far,
# 13 GiB of weights and AdamW state) for a peak like the checkpointed rows'; not predicted, so an out-of-memory is
# possible and recorded. The H200's ran in run 4 (peaks 81.7 and 79.2 GiB, under the checkpointed runs'); the
# H100's are untried.
CARD_BUDGETS = {"h200": {2: 0.7, 4: 0.7}, "h100": {2: 0.5, 3: 0.6, 4: 0.5}}
# The authors' configuration at their microbatch (82.5 GiB on an H200) does not fit an 80 GB card: half of it does.
BASELINE_MICROBATCH = {"h200": 256, "h100": 128}
CARD_MIN_GIB = {"h200": 100.0, "h100": 0.0}  # the card class of a device with at least this much memory


def card_class(total_gib: float) -> str:
    return next(card for card, least in CARD_MIN_GIB.items() if total_gib >= least)


def gpu_memory_gib(python: str = sys.executable) -> float:
    """The first GPU's memory, asked in a child process: CUDA initialised here would hold memory all suite long."""
    code = ("import torch; print(torch.cuda.get_device_properties(0).total_memory / 2 ** 30 "
            "if torch.cuda.is_available() else 0)")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    return float(done.stdout.strip() or 0) if done.returncode == 0 else 0.0


def paper_suite(card: str) -> tuple:
    """(label, `python -m microdit.bench` arguments) for `card`, most important first (docs/benchmarks.md, runs
    1-5, says what each settled): every stage compiled per block, stages 2 and 4 with the activation budget,
    whole-model compile at stage 1, the one-hot dispatch beside the index one, the same-card baseline (the authors'
    configuration), the 256 px sampler, flash attention, checkpointed blocks, and the layers eager and compiled.
    Every compiled item starts from a cold compile cache of its own."""
    blocks = ["--compile", "blocks"]

    def train(number: int, *switches: str) -> list[str]:
        microbatch = CARD_FITS[card][number][0]
        return ["train", "--stage", str(number), "--microbatch", str(microbatch), *blocks, "--low-precision-norm",
                *switches]

    def label(number: int) -> str:
        return f"s{number} blocks mb{CARD_FITS[card][number][0]} lpnorm"

    def checkpointed(number: int, suffix: str = "", *extra: str) -> tuple:
        count = CARD_FITS[card][number][1]
        return (label(number) + (f" ckpt{count}" if count else "") + suffix,
                train(number, *(["--checkpoint-blocks", str(count)] if count else []), *extra))

    def fitted(number: int, suffix: str = "", *extra: str) -> tuple:
        """How the suite fits the stage's microbatch: the compiler's activation budget where the card has one for
        the stage (on the H200, 10.7 % faster than 12 checkpointed blocks at stage 4; on the H100, guesses), else
        checkpointed blocks."""
        if number not in CARD_BUDGETS[card]:
            return checkpointed(number, suffix, *extra)
        budget = CARD_BUDGETS[card][number]
        return f"{label(number)} budget{budget}{suffix}", train(number, "--activation-budget", str(budget), *extra)

    def layers(microbatch: int) -> tuple:  # the stages trained at this microbatch on this card, in one process
        numbers = [n for n, (m, _) in sorted(CARD_FITS[card].items()) if m == microbatch]
        return (f"layers s{'-'.join(map(str, numbers))} mb{microbatch}",
                ["layers", *(f"--stage={n}" for n in numbers), "--microbatch", str(microbatch)])

    one_hot = ("--dispatch", "one_hot")
    baseline = BASELINE_MICROBATCH[card]
    return (
        fitted(1, " profiled", "--profile"),
        fitted(2, " one-hot", *one_hot),
        (f"s1 eager authors-config mb{baseline}", ["train", "--stage", "1", "--microbatch", str(baseline),
                                                   *one_hot]),
        *(fitted(number, " one-hot", *one_hot) for number in (1, 4)),
        fitted(2, " profiled", "--profile"),
        ("sample bf16 blocks 256", ["sample", "--batch", "128", "--resolution", "256", *blocks]),
        fitted(3),
        fitted(1, " flash", "--attention-backend", "flash"),
        *(checkpointed(number) for number in sorted(CARD_BUDGETS[card]) if CARD_FITS[card][number][1]),
        ("s1 model-compile lpnorm", ["train", "--stage", "1", "--compile", "model", "--low-precision-norm",
                                     "--profile"]),
        *(layers(microbatch) for microbatch in sorted({m for m, _ in CARD_FITS[card].values()}, reverse=True)),
        ("layers s4 compiled moe", ["layers", "--stage", "4", "--microbatch", str(CARD_FITS[card][4][0]),
                                    "--attention-backend", "default", "--compile-moe"]),
    )


MIN_ITEM_S = 20.0  # below this much budget an item cannot even build the model: record it as skipped


def expected_seconds(args: list[str]) -> float:
    """Roughly how long an item takes on an H200 machine (runs 1-4: process start, model build, FLOP count,
    compiling, warm-up, timing): an item is started only while the budget still holds this much, so that a
    long one left for a second call does not time out half-way and cost the shorter ones after it."""
    mode = args[0]
    if mode == "layers":
        return 30.0 + (150.0 if "--compile-moe" in args else 0.0)
    compiled = args[args.index("--compile") + 1] if "--compile" in args else "none"
    seconds = {"none": 45.0, "blocks": 240.0, "model": 300.0}[compiled] if mode in ("train", "sample") else MIN_ITEM_S
    return seconds + (10.0 if "--profile" in args else 0.0)


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


def run_suite(items, out: Path, budget_s: float, extra_args: list[str] = (), python: str = sys.executable,
              log: Path | None = None) -> dict:
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
        for record in _run_item(python, [*args, *extra_args], remaining, label, log):
            _append(out, {"label": label, **record})
            counts["failed" if "error" in record else "measured"] += 1
    return counts


def _run_item(python: str, args: list[str], timeout_s: float, label: str, log: Path | None) -> list[dict]:
    command = [python, "-m", "microdit.bench", *args]
    try:
        # a compile cache of its own per item: each compiled item is a cold start, as on a fresh cluster
        with tempfile.TemporaryDirectory(prefix="microdit-compile-cache-") as cache:
            done = _run_group(command, timeout_s, {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
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


def _text(output: str | bytes | None) -> str:
    """A child's output as text: a timeout hands it over as bytes, or None."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _run_group(command: list[str], timeout_s: float, env: dict) -> subprocess.CompletedProcess:
    """subprocess.run, but a timeout kills the item's whole process group: the compiler's workers outlive it."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
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


def _append_log(log: Path | None, label: str, stderr: str | bytes | None) -> None:
    if log is None or not stderr:
        return
    with Path(log).open("a") as f:
        f.write(f"===== {label}\n{_text(stderr)[-20000:]}\n")
