"""profiles/slurm against a real SLURM (tests/slurm/cluster.sh); skipped unless MICRODIT_SLURM=1.

Runs tests/slurm/smoke/Snakefile for real: every rule is an sbatch job (about 15-20 s each here, most of it the
inner snakemake starting up inside the job), so these are slow.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = Path(os.environ.get("MICRODIT_SLURM_DIR", "/tmp/microdit-slurm"))
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# Generous bound: a hang (e.g. status polling that never sees the job end) must fail, not block CI.
TIMEOUT_S = 240


def _run_snakemake(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    if not SNAKEMAKE.is_file():
        pytest.skip(f"{SNAKEMAKE} not found (snakemake must be installed next to this Python)")
    env = dict(os.environ)
    # cluster.sh's bin/ wraps srun & co. so they find the test cluster's slurm.conf even where the jobstep plugin
    # strips SLURM_CONF from the environment (see cluster.sh, write_configs).
    conf = Path(env.get("SLURM_CONF") or SLURM_DIR / "etc" / "slurm.conf")
    if not conf.is_file():
        pytest.fail(f"{conf} missing: run `bash tests/slurm/cluster.sh start` first")
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = os.pathsep.join([str(SLURM_DIR / "bin"), str(SNAKEMAKE.parent), env.get("PATH", "")])
    cmd = [str(SNAKEMAKE), "--profile", str(REPO / "profiles" / "slurm"), "-s",
           str(REPO / "tests" / "slurm" / "smoke" / "Snakefile"), "--directory", str(workdir), *extra]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    print(proc.stdout[-4000:], proc.stderr[-8000:], sep="\n")
    return proc


def test_profile_runs_chain_as_slurm_jobs(tmp_path):
    proc = _run_snakemake(tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a = (tmp_path / "a.txt").read_text()
    b = (tmp_path / "b.txt").read_text()
    assert "partition=debug" in a
    job_a = a.split("job=")[1].split()[0]
    job_b = b.split("b job=")[1].split()[0]
    # Both rules really ran as (distinct) SLURM jobs, not locally.
    assert job_a.isdigit() and job_b.isdigit() and job_a != job_b
    assert b.startswith(a)


def test_failing_rule_is_reported(tmp_path):
    proc = _run_snakemake(tmp_path, "--config", "fail=1")
    assert proc.returncode != 0
    assert "Error in rule a" in proc.stderr or "failed" in proc.stderr.lower(), proc.stderr[-4000:]
    assert not (tmp_path / "b.txt").exists()
