"""What made an artifact: the code (git commit, whether the tree had changes), the versions of the libraries that
decide its bytes, the host, the GPUs and the SLURM job. Every summary JSON and every export records it under
`provenance`; what cannot be read (no git, not a checkout, no GPU) is recorded as unknown, never an error."""
import os
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

UNKNOWN = "unknown"
# distribution names of the libraries recorded, by the name the record gives them
LIBRARIES = {"microdit": "microdit", "torch": "torch", "diffusers": "diffusers", "open_clip": "open-clip-torch",
             "streaming": "mosaicml-streaming"}
SLURM_IDS = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
             "step_id": "SLURM_STEP_ID", "nodelist": "SLURM_JOB_NODELIST"}


def git(*args: str) -> str | None:
    """A git command's output in the package's checkout, or None (no git, not a checkout, any failure)."""
    try:
        done = subprocess.run(["git", "-C", str(source_root()), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_root() -> Path:
    return Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_state() -> dict:
    """The commit of the checkout the package runs from, and whether tracked files differ from it. A package
    installed into a virtual environment that lies inside some checkout is not that checkout's code: the checkout
    must be the package's own folder."""
    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != source_root():
        return {"commit": UNKNOWN, "dirty": UNKNOWN}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or UNKNOWN, "dirty": UNKNOWN if status is None else bool(status)}


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def gpu_state() -> dict:
    """CUDA and the GPU models, read from torch only when the command loaded it: a command that did not (download)
    used no GPU, and importing torch would cost it seconds."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"cuda": None, "gpus": []}
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {"cuda": torch.version.cuda, "gpus": gpus}


def provenance() -> dict:
    return {**code_state(), "versions": {name: version(dist) for name, dist in LIBRARIES.items()}, **gpu_state(),
            "host": socket.gethostname(),
            "slurm": {name: os.environ[var] for name, var in SLURM_IDS.items() if os.environ.get(var)}}


def code_version() -> str:
    """One line for a page footer: the microdit version and its commit (marked when the tree had changes)."""
    state = code_state()
    if state["commit"] == UNKNOWN:
        return f"microdit {version('microdit')}"
    return f"microdit {version('microdit')}, commit {state['commit'][:12]}{'-dirty' if state['dirty'] else ''}"
