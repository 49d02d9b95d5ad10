"""`microdit bench suite`: the prepared GPU run — every stage and variant of docs/benchmarks.md in one call.

Each measurement runs in its own process (an out-of-memory or a crash costs that line only, and the allocator
starts clean), in priority order, within a wall-clock budget: what did not fit is recorded as skipped. Each result
is appended to the output file as one complete JSON line the moment it exists, so a run killed at its time limit
keeps everything measured so far.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

# (label, `python -m microdit.bench` arguments), most important first. The first GPU run (docs/benchmarks.md,
# 2026-11-26, H200) measured every stage eager, the memory goals, per-block compile at stage 1 and the sampler; what
# it left open comes first here: the same-card baseline (cheap; it tells whether a card matches the last one), the
# compiled sampler with the caption side precomputed (1.90x of the 2x goal before; about 70 s), then the compiled
# training variants, each of which pays a cold compile (about 200 s) on a fresh machine.
PAPER_SUITE = (
    ("s1 eager authors-config", ["train", "--stage", "1", "--dispatch", "one_hot"]),
    ("sample bf16 blocks", ["sample", "--batch", "128", "--resolution", "256", "--compile", "blocks",
                            "--repeats", "1"]),
    ("s1 model-compile lpnorm", ["train", "--stage", "1", "--compile", "model", "--low-precision-norm",
                                 "--profile"]),
    ("s1 blocks lpnorm one-hot", ["train", "--stage", "1", "--compile", "blocks", "--low-precision-norm",
                                  "--dispatch", "one_hot"]),
    ("s2 blocks mb256 lpnorm ckpt12", ["train", "--stage", "2", "--microbatch", "256", "--compile", "blocks",
                                       "--low-precision-norm", "--checkpoint-blocks", "12", "--profile"]),
    ("s4 eager mb16 one-hot", ["train", "--stage", "4", "--dispatch", "one_hot", "--low-precision-norm"]),
    ("s4 eager mb16 index", ["train", "--stage", "4", "--low-precision-norm"]),
    ("sample bf16 blocks 512", ["sample", "--batch", "64", "--resolution", "512", "--compile", "blocks",
                                "--repeats", "1"]),
    ("s3 blocks mb128 lpnorm", ["train", "--stage", "3", "--microbatch", "128", "--compile", "blocks",
                                "--low-precision-norm"]),
    ("s4 blocks mb64 lpnorm ckpt12", ["train", "--stage", "4", "--microbatch", "64", "--compile", "blocks",
                                      "--low-precision-norm", "--checkpoint-blocks", "12"]),
    ("s1 blocks lpnorm", ["train", "--stage", "1", "--compile", "blocks", "--low-precision-norm"]),
)

MIN_ITEM_S = 20.0  # below this much budget an item cannot even build the model: record it as skipped


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
        if remaining < MIN_ITEM_S:
            _append(out, {"label": label, "args": args, "skipped": "time budget spent"})
            counts["skipped"] += 1
            continue
        for record in _run_item(python, [*args, *extra_args], remaining, label, log):
            _append(out, {"label": label, **record})
            counts["failed" if "error" in record else "measured"] += 1
    return counts


def _run_item(python: str, args: list[str], timeout_s: float, label: str, log: Path | None) -> list[dict]:
    command = [python, "-m", "microdit.bench", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
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


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
    print(json.dumps(record), flush=True)


def _append_log(log: Path | None, label: str, stderr: str | bytes | None) -> None:
    if log is None or not stderr:
        return
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    with Path(log).open("a") as f:
        f.write(f"===== {label}\n{text[-20000:]}\n")
