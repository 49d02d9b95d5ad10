"""The workflow's commands as a user types them in the checkout: bare `snakemake` (the workflow profile's tiny
preset) and `snakemake --profile slurm` after the README's one setup step, `make profiles`, which plans the paper
once its placeholders are filled in."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PAPER_PLACEHOLDERS = ["downloads.cc12m.options.url-list", "downloads.sa1b.options.links",
                      "downloads.sa1b.options.captions", "slurm.cpu.partition", "slurm.gpu.partition",
                      "slurm.train.partition", "eval.geneval.repo", "eval.geneval.detector"]


def typed(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command run in the checkout, as typed there (tests add only `-d`, so that Snakemake's state stays out)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_bare_snakemake_plans_the_tiny_preset(tmp_path):
    result = typed(SNAKEMAKE, "-n", "-d", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "workflow specific profile profiles/default" in result.stderr
    assert "results/tiny/report.html" in result.stdout
    assert "results/tiny/train/stage4/final.safetensors" in result.stdout
    assert "slurm_partition" not in result.stdout  # the tiny preset names no partition: the cluster's default


def test_the_long_tiny_preset_plans_over_the_tiny_one(tmp_path):
    result = typed(SNAKEMAKE, "--configfile", "config/tiny.yaml", "config/tiny-long.yaml", "-n", "-d", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results/tiny-long/report.html" in result.stdout
    assert "results/tiny-long/train/stage4/ema.safetensors" in result.stdout


def test_the_slurm_profile_plans_after_make_profiles(tmp_path):
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    setup = typed("make", "profiles", env=xdg)
    assert setup.returncode == 0, setup.stderr
    assert (tmp_path / "config" / "snakemake" / "slurm").resolve() == REPO / "profiles" / "slurm"
    assert typed("make", "profiles", env=xdg).returncode == 0  # again: the link is replaced, not nested
    result = typed(SNAKEMAKE, "--profile", "slurm", "--configfile", "config/tiny.yaml", "-n", "-d",
                   str(tmp_path / "run"), env=xdg)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in result.stderr
    assert "Job stats" in result.stdout and "rule train:" in result.stdout
    assert "Shell command: microdit train --config" in result.stdout  # the driver's log shows each job's command


def test_the_demos_profile_prints_no_shell_commands(tmp_path):
    """`make demo` runs `--profile profiles/local`: its jobs' rule, files and log, not their commands (a stage's
    overrides made lines of over a thousand characters), although the workflow profile is read after it."""
    result = typed(SNAKEMAKE, "--profile", "profiles/local", "--configfile", "config/tiny.yaml", "-n", "-d",
                   str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rule train:" in result.stdout and "log: results/tiny/logs/" in result.stdout
    assert "Shell command" not in result.stdout


def test_a_typo_in_a_target_meets_no_rule(tmp_path):
    result = typed(SNAKEMAKE, "-n", "-d", str(tmp_path), "results/tiny/train/stag4/final.safetensors")
    assert result.returncode != 0
    assert "No rule to produce results/tiny/train/stag4/final.safetensors" in result.stdout + result.stderr
    assert "KeyError" not in result.stdout + result.stderr


def test_the_paper_as_shipped_stops_before_any_job_naming_each_placeholder(tmp_path, paper_filled):
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    assert typed("make", "profiles", env=xdg).returncode == 0
    shipped = typed(SNAKEMAKE, "--profile", "slurm", "--configfile", "config/paper.yaml", "-n", "-d",
                    str(tmp_path / "shipped"), env=xdg)
    printed = shipped.stdout + shipped.stderr
    assert shipped.returncode != 0 and "Job stats" not in printed
    named = re.findall(r"^  (\S+): <.*> is a placeholder \(expected your own value\)$", printed, re.MULTILINE)
    assert named == PAPER_PLACEHOLDERS
    assert not (tmp_path / "shipped" / "results").exists()
    filled = typed(SNAKEMAKE, "--profile", "slurm", "--configfile", "config/paper.yaml", str(paper_filled), "-n", "-d",
                   str(tmp_path / "filled"), env=xdg)
    assert filled.returncode == 0, filled.stderr[-3000:]
    assert "slurm_partition=gpu" in filled.stdout and "Job stats" in filled.stdout
