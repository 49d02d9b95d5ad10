#!/usr/bin/env bash
# CI: the tiny preset's whole DAG through a real one-node SLURM, up to the report. Data and evaluation rules are sbatch
# jobs of the Snakemake SLURM executor; each of the four training stages is one sbatch job of submitit with 2 tasks
# sharded by FSDP2 (tests/slurm/tiny_on_slurm.yaml).
# Needs the venv (make install) and a started cluster (tests/slurm/cluster.sh start).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
# shellcheck disable=SC1091
source "${MICRODIT_SLURM_DIR:-/tmp/microdit-slurm}/env"
rm -rf results/tiny-slurm results/tiny-slurm-store
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
snakemake --profile profiles/slurm --configfile config/tiny.yaml tests/slurm/tiny_on_slurm.yaml 2>&1 | tee "$log"
SNAKEMAKE_LOG="$log" python - <<'PY'
import json
import os
import re
import subprocess
from pathlib import Path

run = Path("results/tiny-slurm")
for stage in ("stage1", "stage2", "stage3", "stage4"):
    stats = json.loads((run / "train" / stage / "train_stats.json").read_text())
    assert stats["world_size"] == 2, f"{stage}: {stats['world_size']} ranks"
    assert (run / "train" / stage / "final.safetensors").stat().st_size > 0, stage
    jobs = list((run / "train" / stage / "submitit").glob("*/*_submitted.pkl"))
    assert jobs, f"{stage}: no submitit job folder"
    job_id = jobs[0].parent.name
    state = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert state == ["COMPLETED"], f"{stage}: SLURM job {job_id} is {state}"
    print(f"{stage}: {stats['steps']} steps on 2 ranks, final loss {stats['final_loss']:.4f}, SLURM job {job_id} "
          "COMPLETED")
assert len(list(Path("results/tiny-slurm-store/latents").glob("synthetic-*/parts2/[01]/index.json"))) == 2
assert list(Path("results/tiny-slurm-store/latents").glob("synthetic-*/parts2/index.json"))
assert (run / "report.html").stat().st_size > 0
# the executor plugin deletes the logs of successful jobs; its submissions are in Snakemake's own output
submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", Path(os.environ["SNAKEMAKE_LOG"]).read_text())
rules = {rule for _, rule in submitted}
assert {"download", "convert", "train_vae", "precompute"} <= rules, f"rules through the SLURM executor: {rules}"
print(f"ok: {len(submitted)} executor jobs ({', '.join(sorted(rules))}), 4 submitit training jobs, the report")
PY
