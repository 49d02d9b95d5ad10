"""profiles/slurm/driver.sbatch, the workflow's driver as a SLURM job: valid bash whose #SBATCH lines sbatch reads,
and, run as a batch script is (outside SLURM here), a resubmitted driver clears the lock a killed one left and
plans the workflow it is given."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "profiles" / "slurm" / "driver.sbatch"


def test_the_script_is_valid_bash_with_its_options_before_any_command():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    lines = SCRIPT.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    options = [line for line in lines if line.startswith("#SBATCH")]
    assert lines[0] == "#!/bin/bash" and len(options) >= 4  # sbatch stops reading them at the first command
    assert all(lines.index(option) < first_command for option in options)


@pytest.mark.slow
def test_a_resubmitted_driver_clears_the_stale_lock_and_plans(tmp_path):
    for name in ("Snakefile", "rules", "config", "profiles", "envs"):
        (tmp_path / name).symlink_to(REPO / name)
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("")  # what a driver killed at its time limit leaves
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_SUBMIT_DIR": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT), "--configfile", "config/tiny.yaml", "-n"], cwd="/", env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stale Snakemake lock" in done.stderr and not list(locks.glob("*.lock"))
    assert "This was a dry-run" in done.stdout + done.stderr
