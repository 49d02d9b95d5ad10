"""The Snakemake workflow itself: the paper DAG on a machine with no data, lint, config validation, and a real run
of a miniature of the tiny preset, twice, for byte-identical data artifacts and identical training metrics."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(*args, cwd, check=True, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([*SNAKEMAKE, "--directory", str(cwd), *args], capture_output=True, text=True, env=env,
                            timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def test_paper_dag_dry_runs_with_every_rule(tmp_path):
    out = snakemake("-n", "--configfile", str(REPO / "config" / "paper.yaml"), "--cores", "1", cwd=tmp_path).stdout
    table = out[out.index("Job stats"):].split("\n\n")[0].splitlines()[3:]
    counts = {rule: int(n) for rule, n in (line.split() for line in table) if rule != "total"}
    # 6 downloads (5 training sets + COCO), 6 converted datasets (cc12m twice: all and min-res-512), 4 stages
    assert counts == {"download": 6, "convert": 6, "precompute": 6, "stage_config": 4, "train": 4,
                      "stage_samples": 4, "eval_captions": 1, "fid_reference_stats": 1, "generate_eval_samples": 1,
                      "fid": 1, "geneval_metadata": 1, "geneval_generate": 1, "geneval_score": 1,
                      "geneval_summary": 1, "report": 1, "all": 1}


def test_lint_is_clean(tmp_path):
    result = snakemake("--lint", "--configfile", str(REPO / "config" / "tiny.yaml"), cwd=tmp_path, check=False)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_invalid_config_is_refused_naming_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["latents"]["resolutions"] = ["sixty-four"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"), cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "sixty-four" in result.stdout + result.stderr and "resolutions" in result.stdout + result.stderr
