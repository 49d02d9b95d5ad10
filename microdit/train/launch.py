"""Run a stage through submitit: on SLURM, as N local processes, or in this process (debug), and wait for it.

One job per stage folder: the driver holds the folder's lock and records its job before it waits, so a driver that
was stopped or killed is followed by one that waits on the same job (microdit.train.stage_job). A stopped driver
leaves its job running unless launch.cancel_on_exit. A preempted, timed-out or requeued SLURM job resumes from the
newest full-state checkpoint of the stage directory (TrainJob is Checkpointable). Rank, world size and rendezvous
come from submitit inside the job (microdit.train.distributed).
"""
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import submitit
import torch
from submitit.core.utils import FailedJobError, UncompletedJobError

from microdit.errors import UserError
from microdit.train.config import LaunchConfig, StageConfig, stage_config_from_dict, to_dict
from microdit.train.distributed import export_layout
from microdit.train.stage_job import (driver_lock, forget_job, job_folder, record_job, recorded_job,
                                     still_running)


class TrainJob(submitit.helpers.Checkpointable):
    """The job body, one per task. Holds only the config as a plain dict, so it pickles small and cleanly."""

    def __init__(self, config: dict, resume: str):
        self.config, self.resume = config, resume

    def __call__(self) -> dict:
        from microdit.models.speed import keep_compiling_within
        from microdit.train.callbacks import SampleGrid
        from microdit.train.distributed import init_distributed, shutdown_distributed
        from microdit.train.trainer import Trainer

        cfg = stage_config_from_dict(self.config)
        # `scontrol requeue` reruns the job as submitted: an attempt after the first resumes whatever the first did
        resume = "auto" if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 else self.resume
        # N tasks on one machine must not each take every core
        if not torch.cuda.is_available():
            torch.set_num_threads(cfg.launch.cpus_per_task)
        if cfg.compile != "none":
            keep_compiling_within(cfg.launch.cpus_per_task)
        info = init_distributed()
        try:
            grid = SampleGrid(cfg.samples, cfg.out_dir, cfg.data.text_encoder, cfg.data.caption_len)
            return Trainer(cfg, info, resume=resume, callbacks=[grid]).run()
        finally:
            shutdown_distributed()

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # a requeued attempt always resumes, even when the first one was started with --resume none
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, resume="auto"))


def executor_parameters(cfg: StageConfig) -> dict:
    """submitit parameters from the stage's launch section (cluster-prefixed keys are ignored by other clusters)."""
    launch: LaunchConfig = cfg.launch
    debug = launch.cluster == "debug"
    params = {"name": cfg.name, "timeout_min": launch.timeout_min, "nodes": 1 if debug else launch.nodes,
              "tasks_per_node": 1 if debug else launch.tasks_per_node, "cpus_per_task": launch.cpus_per_task}
    if launch.gpus_per_node:
        params["gpus_per_node"] = launch.gpus_per_node
    if launch.mem_gb:
        params["mem_gb"] = launch.mem_gb
    optional = {"slurm_partition": launch.partition, "slurm_account": launch.account, "slurm_qos": launch.qos,
                "slurm_constraint": launch.constraint}
    params.update({key: value for key, value in optional.items() if value})
    if launch.sbatch_extra:  # ['--mail-type=END', '--exclusive'] -> {'mail-type': 'END', 'exclusive': True}
        split = (line[2:].partition("=") for line in launch.sbatch_extra)
        params["slurm_additional_parameters"] = {key: value if sep else True for key, sep, value in split}
    return params


def make_executor(cfg: StageConfig) -> submitit.AutoExecutor:
    folder = job_folder(cfg.out_dir)
    # cluster is explicit: left out, submitit picks slurm whenever srun is on PATH
    executor = submitit.AutoExecutor(folder=folder, cluster=cfg.launch.cluster,
                                     slurm_max_num_timeout=cfg.launch.max_requeues)
    executor.update_parameters(**executor_parameters(cfg))
    return executor


def absolute_paths(cfg: StageConfig) -> None:
    """A job may start in another working directory (a SLURM node, a requeue): pin paths to this one."""
    cfg.out_dir = str(Path(cfg.out_dir).resolve())
    if cfg.init is not None:
        cfg.init.from_ = str(Path(cfg.init.from_).resolve())


RAISED = re.compile(r"^(?:\[rank\d+\]: )?[\w.]*(?:Error|Exception|Interrupt)\b.*")


def failure_reason(text: str) -> str:
    """The exception line of submitit's failure report: the trace sits between two dashed rules. A job that died
    without leaving its result (a full disk cannot take it either) has the job's error stream after one rule instead:
    its last exception line is the cause, the missing result the consequence."""
    lines = [line.strip() for line in text.splitlines()]
    rules = [i for i, line in enumerate(lines) if len(line) >= 5 and set(line) == {"-"}]
    trace = [line for line in lines[rules[0] + 1:rules[1]] if line] if len(rules) >= 2 else []
    raised = [line for line in lines[rules[0] + 1:] if RAISED.match(line)] if len(rules) == 1 else []
    if trace:
        reason = trace[-1]
    elif raised:
        reason = f"{raised[-1]}; it left no result"
    else:
        reason = lines[0] if lines else "no reason given"
    return reason if len(reason) <= 300 else reason[:297] + "..."


def check_init(cfg: StageConfig, resume: str) -> None:
    """Fail in the launching shell, not on a node, when the stage starts from a previous one that is not there."""
    from microdit.train.state import newest_checkpoint, resolve_init

    resuming = resume == "auto" and newest_checkpoint(cfg.out_dir) is not None
    if cfg.init is not None and not resuming:
        resolve_init(cfg.init.from_, cfg.init.mode)


class DriverStopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stopped_by_signals():
    """Ctrl-C, SIGTERM (Snakemake stopping its jobs) and SIGHUP (a closed terminal or ssh session) end the wait with
    DriverStopped, not with a traceback."""
    def stop(signum, frame):
        raise DriverStopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def launch(cfg: StageConfig, resume: str = "auto") -> int:
    """Wait on the stage's job, submitting one unless a previous driver's still runs; 0 when it ends well, 1 when it
    fails (with its log path), 128 + the signal when this driver is stopped first."""
    absolute_paths(cfg)
    if cfg.launch.cluster == "debug":
        return run_in_place(cfg, resume)
    with driver_lock(Path(cfg.out_dir)), stopped_by_signals():
        job = None
        try:
            job = reattach(cfg) or submit(cfg, resume)
            return collect(job, cfg)
        except DriverStopped as stop:
            return leave(job, cfg, stop.signum)


def run_in_place(cfg: StageConfig, resume: str) -> int:
    """`cluster: debug`: this process is the job (nothing outlives it), or one rank of it when torchrun or an srun of
    several tasks started each rank this way; rank 0 holds the stage folder's lock for all of them."""
    rank = int(os.environ["RANK"]) if export_layout() else 0
    with driver_lock(Path(cfg.out_dir)) if rank == 0 else contextlib.nullcontext():
        return collect(submit(cfg, resume), cfg)


def submit(cfg: StageConfig, resume: str):
    check_init(cfg, resume)
    job = make_executor(cfg).submit(TrainJob(to_dict(cfg), resume))
    if cfg.launch.cluster != "debug":
        record_job(Path(cfg.out_dir), job, cfg.launch.cluster, job.num_tasks)
    print(f"microdit train: stage {cfg.name!r} submitted as job {job.job_id} on {cfg.launch.cluster}; "
          f"logs in {job.paths.folder}", file=sys.stderr, flush=True)
    return job


def reattach(cfg: StageConfig):
    """The job a previous driver submitted, if it runs or left a result; None to submit a new one."""
    found = recorded_job(Path(cfg.out_dir))
    if found is None:
        return None
    job, record = found
    what = f"{record['cluster']} job {job.job_id} of stage {cfg.name!r}"
    if still_running(job):
        print(f"microdit train: reattached to {what} (submitted {record['submitted']} by {record['driver']}); "
              f"logs in {job.paths.folder}", file=sys.stderr, flush=True)
        return job
    if job.task(0).paths.result_pickle.exists():
        print(f"microdit train: {what} ended while no driver watched; collecting it", file=sys.stderr, flush=True)
        return job
    info = job.get_info()  # sacct's State on SLURM, the controller's jobState on the local cluster
    state = info.get("State") or info.get("jobState") or "no state"
    print(f"microdit train: {what} ended without a result while no driver watched ({state}); submitting a new job, "
          "which resumes from the stage's newest checkpoint", file=sys.stderr, flush=True)
    forget_job(Path(cfg.out_dir))
    return None


def echo_stage_lines(job, stage: str, poll_s: float = 2.0) -> None:
    """Until the job ends, copy rank 0's lines about the stage (its progress, its first step) from the job's log to
    this driver's stderr, so that a local run's console shows the training and not only where its log is."""
    log, offset = Path(job.task(0).paths.stderr), 0
    while True:
        ended = job.done()
        if log.exists():
            with log.open("rb") as f:
                f.seek(offset)
                text = f.read()
            whole = text[:text.rfind(b"\n") + 1]  # a line still being written waits for the next look
            offset += len(whole)
            for line in whole.decode(errors="replace").splitlines():
                if line.startswith(f"{stage}:"):
                    print(line, file=sys.stderr, flush=True)
        if ended:
            return
        time.sleep(poll_s)


def collect(job, cfg: StageConfig) -> int:
    try:
        if cfg.launch.cluster == "local":  # a SLURM stage runs for days: its log has these lines (`tail -f` it)
            echo_stage_lines(job, cfg.name)
        results = job.results()
    except UserError:
        raise  # the debug cluster runs in this process and re-raises the job's own error
    except (FailedJobError, UncompletedJobError) as err:
        forget_job(Path(cfg.out_dir))
        print(f"microdit train: job {job.job_id} failed ({failure_reason(str(err))}); "
              f"log: {job.task(0).paths.stderr}", file=sys.stderr)
        return 1
    forget_job(Path(cfg.out_dir))
    stats = results[0]
    print(f"microdit train: stage {cfg.name!r} done at step {stats['global_step']}, final loss "
          f"{stats['final_loss']:.4f}; outputs in {cfg.out_dir}", file=sys.stderr)
    return 0


def leave(job, cfg: StageConfig, signum: int) -> int:
    """The driver was stopped: its job runs on (the next driver waits on it), or is cancelled if the config says."""
    name = signal.Signals(signum).name
    if job is None:
        print(f"microdit train: stopped by {name} before a job was submitted", file=sys.stderr)
    elif cfg.launch.cancel_on_exit:
        job.cancel(check=False)
        forget_job(Path(cfg.out_dir))
        print(f"microdit train: stopped by {name}; job {job.job_id} cancelled (launch.cancel_on_exit)",
              file=sys.stderr)
    else:
        cancel = f"scancel {job.job_id}" if cfg.launch.cluster == "slurm" else f"kill -INT {job.job_id}"
        print(f"microdit train: stopped by {name}; stage {cfg.name!r} goes on as {cfg.launch.cluster} job "
              f"{job.job_id}. Running this again waits on it; `{cancel}` cancels it.\n"
              f"  its log: {job.task(0).paths.stderr}", file=sys.stderr)
    return 128 + signum
