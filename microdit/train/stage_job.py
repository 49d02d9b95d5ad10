"""One training job per stage folder, whoever drives it: the driver's lock, and the record of the job it waits on.

A stage runs for days in a SLURM job while its driver (`microdit train`, under Snakemake) waits on a login node. A
driver that dies leaves the job running; the next driver finds the job in the record and waits on it again instead
of submitting a second job into the same checkpoints. The lock is an flock, which the kernel releases however its
holder dies, so a killed driver never blocks the next one.
"""
import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import submitit
from submitit.local.local import LocalJob
from submitit.slurm.slurm import SlurmJob

from microdit.errors import UserError
from microdit.files import read_json, write_json

LOCK_FILE = "driver.lock"
RECORD_FILE = "job.json"
# SLURM's states of a job that has yet to end (a preempted one is requeued); a job sacct does not know has ended
WAITING_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                  "RESIZING", "SUSPENDED", "PREEMPTED", "SIGNALING", "STAGE_OUT"}


class StageBusy(UserError):
    """Another driver holds the stage folder."""


@contextlib.contextmanager
def driver_lock(out_dir: Path) -> Iterator[None]:
    """Hold the stage folder's driver lock for the block; the lock file says who holds it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise StageBusy(f"{out_dir}: already driven by {holder} ({path}); wait for it or stop it (its job "
                            "keeps running and the next `microdit train` of this stage waits on it)") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
        yield


def job_folder(out_dir: str | Path) -> Path:
    """Where submitit keeps a stage's jobs, one folder per job id (%j)."""
    return Path(out_dir) / "submitit" / "%j"


def record_job(out_dir: Path, job: submitit.Job, cluster: str, tasks: int) -> None:
    write_json({"cluster": cluster, "job_id": str(job.job_id), "folder": str(job_folder(out_dir)),
                "tasks": tasks, "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
                "driver": f"pid {os.getpid()} on {socket.gethostname()}"}, Path(out_dir) / RECORD_FILE)


def forget_job(out_dir: Path) -> None:
    (Path(out_dir) / RECORD_FILE).unlink(missing_ok=True)


def recorded_job(out_dir: Path) -> tuple[submitit.Job, dict] | None:
    """The job a previous driver submitted and never saw end, rebuilt from its id and folder, with its record."""
    path = Path(out_dir) / RECORD_FILE
    if not path.exists():
        return None
    record = read_json(path, "record of the stage's training job")
    job_class = {"slurm": SlurmJob, "local": DetachedLocalJob}.get(record.get("cluster"))
    if job_class is None or "job_id" not in record or "folder" not in record:
        print(f"{path}: not a job record of this version (cluster slurm or local, job_id, folder); ignored",
              file=sys.stderr)
        return None
    return job_class(record["folder"], record["job_id"], tasks=range(int(record.get("tasks", 1)))), record


def still_running(job: submitit.Job) -> bool:
    """Whether the job has yet to end (pending, running, requeued...), asking the cluster now."""
    if isinstance(job, DetachedLocalJob):
        return job.get_info()["jobState"] == "RUNNING"
    if job.task(0).paths.result_pickle.exists():
        return False
    state = job.get_info(mode="force").get("State") or "UNKNOWN"
    return state.split()[0] in WAITING_STATES  # "CANCELLED by 0" names who cancelled


class DetachedLocalJob(LocalJob):
    """A job of submitit's local cluster that another driver started: its id is the pid of the controller process
    that runs its tasks, so that process, while it lives, is the job."""

    def _controller_alive(self) -> bool:
        try:
            with open(f"/proc/{int(self.job_id)}/cmdline", "rb") as f:
                command = f.read().split(b"\0")
            with open(f"/proc/{int(self.job_id)}/stat", "rb") as f:
                zombie = f.read().rsplit(b") ", 1)[-1].startswith(b"Z")
        except (OSError, ValueError):
            return False
        return not zombie and b"submitit.local._local" in command

    def get_info(self, mode: str = "force") -> dict[str, str]:
        if self._controller_alive():
            return {"jobState": "RUNNING"}
        return {"jobState": "FINISHED" if self.task(0).paths.result_pickle.exists() else "INTERRUPTED"}

    def cancel(self, check: bool = True) -> None:
        if self._controller_alive():
            os.kill(int(self.job_id), 2)  # SIGINT, as submitit's own local jobs are cancelled
