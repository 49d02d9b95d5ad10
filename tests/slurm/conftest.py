"""Every test here needs the real SLURM of cluster.sh: marked `slurm`, and skipped unless MICRODIT_SLURM=1, so a plain
pytest stays cluster-free. Its clients (and the jobs, which inherit the environment) find the cluster's slurm.conf,
kept in cluster.sh's scratch dir, through SLURM_CONF, and its wrappers and this venv's commands first on PATH."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SLURM_DIR = Path(os.environ.get("MICRODIT_SLURM_DIR", "/tmp/microdit-slurm"))


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.slurm)
            if os.environ.get("MICRODIT_SLURM") != "1":
                item.add_marker(pytest.mark.skip(
                    reason="needs the real SLURM from tests/slurm/cluster.sh (set MICRODIT_SLURM=1)"))


@pytest.fixture(autouse=True)
def slurm_environment(monkeypatch):
    conf = Path(os.environ.get("SLURM_CONF") or SLURM_DIR / "etc" / "slurm.conf")
    if not conf.is_file():
        pytest.fail(f"{conf} missing: run `bash tests/slurm/cluster.sh start` first")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    monkeypatch.setenv("PATH", os.pathsep.join([str(SLURM_DIR / "bin"), str(Path(sys.executable).parent),
                                                os.environ["PATH"]]))


@pytest.fixture(autouse=True)
def idle_cluster(slurm_environment):
    """Each test starts on an idle cluster: a job of the test before it still finishing its epilogue (COMPLETING)
    would hold a node, and the new job's wait would count against the test's own time limits."""
    deadline = time.monotonic() + 180
    while True:
        jobs = subprocess.run(["squeue", "-h", "-a", "-o", "%i %T"], capture_output=True, text=True).stdout.split("\n")
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True).stdout.split("\n")
        busy = [line for line in jobs if line.strip()] + [line for line in nodes if line.strip() and "idle" not in line]
        if not busy:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the cluster is not idle after 180 s: {busy}")
        time.sleep(1)
