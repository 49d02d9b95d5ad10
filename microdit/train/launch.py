"""Run a stage through submitit: on SLURM, as N local processes, or in this process (debug), and wait for it.

A preempted or timed-out SLURM job is requeued by submitit (TrainJob is Checkpointable) and the new attempt resumes
from the newest full-state checkpoint of the stage directory. Rank, world size and master address come from
submitit.JobEnvironment inside the job (microdit.train.distributed).
"""
import sys
from pathlib import Path

import submitit
import torch
from submitit.core.utils import FailedJobError, UncompletedJobError

from microdit.errors import UserError
from microdit.train.config import LaunchConfig, StageConfig, stage_config_from_dict, to_dict


class TrainJob(submitit.helpers.Checkpointable):
    """The job body, one per task. Holds only the config as a plain dict, so it pickles small and cleanly."""

    def __init__(self, config: dict, resume: str):
        self.config, self.resume = config, resume

    def __call__(self) -> dict:
        from microdit.models.precompile import keep_compiling_within
        from microdit.train.callbacks import SampleGrid
        from microdit.train.distributed import init_distributed, shutdown_distributed
        from microdit.train.trainer import Trainer

        cfg = stage_config_from_dict(self.config)
        # N tasks on one machine must not each take every core
        if not torch.cuda.is_available():
            torch.set_num_threads(cfg.launch.cpus_per_task)
        keep_compiling_within(cfg.launch.cpus_per_task)
        info = init_distributed()
        try:
            grid = SampleGrid(cfg.samples, cfg.out_dir, cfg.data.text_encoder, cfg.data.caption_len)
            return Trainer(cfg, info, resume=self.resume, callbacks=[grid]).run()
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
    if launch.sbatch_extra:
        params["slurm_additional_parameters"] = sbatch_lines_to_parameters(launch.sbatch_extra)
    return params


def sbatch_lines_to_parameters(lines: list[str]) -> dict:
    """['--mail-type=END', '--exclusive'] -> {'mail-type': 'END', 'exclusive': True}; submitit quotes the values."""
    out = {}
    for line in lines:
        key, sep, value = line[2:].partition("=")
        out[key] = value if sep else True
    return out


def make_executor(cfg: StageConfig) -> submitit.AutoExecutor:
    folder = Path(cfg.out_dir) / "submitit" / "%j"
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


def failure_reason(text: str) -> str:
    """The exception line of submitit's failure report (the trace sits between two dashed rules)."""
    lines = [line.strip() for line in text.splitlines()]
    rules = [i for i, line in enumerate(lines) if len(line) >= 5 and set(line) == {"-"}]
    trace = [line for line in lines[rules[0] + 1:rules[1]] if line] if len(rules) >= 2 else []
    reason = trace[-1] if trace else (lines[0] if lines else "no reason given")
    return reason if len(reason) <= 300 else reason[:297] + "..."


def check_init(cfg: StageConfig, resume: str) -> None:
    """Fail in the launching shell, not on a node, when the stage starts from a previous one that is not there."""
    from microdit.train.state import newest_checkpoint, resolve_init

    resuming = resume == "auto" and newest_checkpoint(cfg.out_dir) is not None
    if cfg.init is not None and not resuming:
        resolve_init(cfg.init.from_, cfg.init.mode)


def launch(cfg: StageConfig, resume: str = "auto") -> int:
    """Submit, block until the job ends, return 0 or 1 (printing the log path of a failed job)."""
    absolute_paths(cfg)
    check_init(cfg, resume)
    job = make_executor(cfg).submit(TrainJob(to_dict(cfg), resume))
    print(f"microdit train: stage {cfg.name!r} submitted as job {job.job_id} on {cfg.launch.cluster}; "
          f"logs: {job.paths.stdout} {job.paths.stderr}", file=sys.stderr, flush=True)
    try:
        results = job.results()
    except UserError:
        raise  # the debug cluster runs in this process and re-raises the job's own error
    except (FailedJobError, UncompletedJobError) as err:
        print(f"microdit train: job {job.job_id} failed ({failure_reason(str(err))}); "
              f"log: {job.paths.stderr}", file=sys.stderr)
        return 1
    stats = results[0]
    print(f"microdit train: stage {cfg.name!r} done at step {stats['global_step']}, final loss "
          f"{stats['final_loss']:.4f}; outputs in {cfg.out_dir}", file=sys.stderr)
    return 0
