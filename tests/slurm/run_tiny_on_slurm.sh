#!/usr/bin/env bash
# CI: the tiny preset's data rules and first two training stages through a real one-node SLURM.
# Data rules are sbatch jobs of the Snakemake SLURM executor; each training stage is an sbatch job of submitit.
# Needs the venv (make install) and a started cluster (tests/slurm/cluster.sh start).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
# shellcheck disable=SC1091
source "${MICRODIT_SLURM_DIR:-/tmp/microdit-slurm}/env"
rm -rf results/tiny-slurm
snakemake stage2 --profile profiles/slurm --configfile config/tiny.yaml tests/slurm/tiny_on_slurm.yaml
python - <<'PY'
import json
from pathlib import Path

run = Path("results/tiny-slurm")
for stage in ("stage1", "stage2"):
    stats = json.loads((run / "train" / stage / "train_stats.json").read_text())
    assert (run / "train" / stage / "final.safetensors").stat().st_size > 0, stage
    jobs = list((run / "train" / stage / "submitit").glob("*/*_submitted.pkl"))
    assert jobs, f"{stage}: no submitit job folder"
    print(f"{stage}: {stats['steps']} steps, final loss {stats['final_loss']:.4f}, submitit job {jobs[0].parent.name}")
assert (run / "data" / "synthetic" / "latents" / "index.json").exists()
slurm_logs = list(Path(".snakemake/slurm_logs").glob("rule_*/**/*.log"))
assert slurm_logs, "the data rules did not go through the SLURM executor"
print(f"ok: {len(slurm_logs)} executor job logs")
PY
