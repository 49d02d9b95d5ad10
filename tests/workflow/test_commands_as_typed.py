"""The workflow's commands as a user types them in the checkout: bare `snakemake` (the workflow profile's tiny
preset) and `snakemake --profile slurm` after the README's one setup step, `make profiles`."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def typed(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command run in the checkout, as typed there (tests add only `-d`, so that Snakemake's state stays out)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_bare_snakemake_plans_the_tiny_preset(tmp_path):
    result = typed(SNAKEMAKE, "-n", "-d", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "workflow specific profile profiles/default" in result.stderr
    assert "results/tiny/report.html" in result.stdout and "results/tiny/train/stage4/final.safetensors" in result.stdout


def test_the_slurm_profile_plans_after_make_profiles(tmp_path):
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    setup = typed("make", "profiles", env=xdg)
    assert setup.returncode == 0, setup.stderr
    assert (tmp_path / "config" / "snakemake" / "slurm").resolve() == REPO / "profiles" / "slurm"
    assert typed("make", "profiles", env=xdg).returncode == 0  # again: the link is replaced, not nested
    result = typed(SNAKEMAKE, "--profile", "slurm", "--configfile", "config/tiny.yaml", "-n", "-d", str(tmp_path / "run"),
                   env=xdg)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in result.stderr
    assert "Job stats" in result.stdout and "rule train:" in result.stdout


def test_a_typo_in_a_target_meets_no_rule(tmp_path):
    result = typed(SNAKEMAKE, "-n", "-d", str(tmp_path), "results/tiny/train/stag4/final.safetensors")
    assert result.returncode != 0
    assert "No rule to produce results/tiny/train/stag4/final.safetensors" in result.stdout + result.stderr
    assert "KeyError" not in result.stdout + result.stderr
