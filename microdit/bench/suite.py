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

# (label, `python -m microdit.bench` arguments), most important first. Measured on an H200 so far (docs/benchmarks.md,
# runs 1-3): every stage eager, stages 1-3 compiled per block, the 256 px sampler compiled, the precompiled warm-up at
# stages 1 and 3. Every compiled item compiles its block graphs in 8 processes first (models/precompile.py) from a
# cold cache of its own, about 60 s. Order: the same-card baseline (cheap; tells whether a card matches the last
# one), stage 4 compiled (the one unmeasured throughput goal), the compiled sampler at 512 px, whole-model compile
# (the authors' route, untried on our code; one graph, nothing to share out, about 250 s), the compiled sampler at
# 256 px and stage 2 compiled (their warm-up after the static-shape fix), then the dispatch comparisons.
_BLOCKS = ["--compile", "blocks", "--precompile-workers", "8"]
PAPER_SUITE = (
    ("s1 eager authors-config", ["train", "--stage", "1", "--dispatch", "one_hot"]),
    ("s4 blocks mb64 lpnorm ckpt12", ["train", "--stage", "4", "--microbatch", "64", *_BLOCKS,
                                      "--low-precision-norm", "--checkpoint-blocks", "12"]),
    ("sample bf16 blocks 512", ["sample", "--batch", "64", "--resolution", "512", *_BLOCKS, "--repeats", "1"]),
    ("s1 model-compile lpnorm", ["train", "--stage", "1", "--compile", "model", "--low-precision-norm", "--profile"]),
    ("sample bf16 blocks 256", ["sample", "--batch", "128", "--resolution", "256", *_BLOCKS, "--repeats", "1"]),
    ("s2 blocks mb256 lpnorm ckpt12", ["train", "--stage", "2", "--microbatch", "256", *_BLOCKS,
                                       "--low-precision-norm", "--checkpoint-blocks", "12"]),
    ("s4 eager mb16 one-hot", ["train", "--stage", "4", "--dispatch", "one_hot", "--low-precision-norm"]),
    ("s4 eager mb16 index", ["train", "--stage", "4", "--low-precision-norm"]),
    ("s1 blocks lpnorm one-hot", ["train", "--stage", "1", *_BLOCKS, "--low-precision-norm", "--dispatch", "one_hot"]),
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


def _run_group(command: list[str], timeout_s: float, env: dict) -> subprocess.CompletedProcess:
    """subprocess.run, but a timeout kills the item's whole process group: its compile workers hold GPU memory."""
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
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    with Path(log).open("a") as f:
        f.write(f"===== {label}\n{text[-20000:]}\n")
