"""What config/paper.yaml asks of its user and of a cluster: its placeholders filled in (refused before any job), a
partition (and account) per kind of job from the config's `slurm` section; checked through Snakemake dry runs of
the real Snakefile."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from microdit.workflow import placeholders, schema_errors

REPO = Path(__file__).resolve().parents[2]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


def dry_run(workdir: Path, config: dict) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n",
                           "-p", "--configfile", str(workdir / "config.yaml")], capture_output=True, text=True,
                          env=env, timeout=300)


def job_resources(output: str) -> dict[str, set[str]]:
    """rule -> the `resources:` lines of its jobs in a dry run."""
    jobs, rule = {}, None
    for line in output.splitlines():
        if line.startswith("rule "):
            rule = line[5:].rstrip(":")
        elif rule and line.strip().startswith("resources:"):
            jobs.setdefault(rule, set()).add(line.strip())
    return jobs


def test_each_kind_of_job_takes_its_partition_and_account(tmp_path):
    config = load("tiny")
    config["latents"]["gpus"] = 1  # precompute becomes a GPU job; the rest of the tiny preset stays on CPUs
    config["slurm"] = {"cpu": {"partition": "cpus", "account": "lab"}, "gpu": {"partition": "gpus"},
                       "train": {"partition": "big-gpus", "account": "lab-train"}}
    result = dry_run(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_resources(result.stdout)
    # the stages and merge_parts (an index of the parts' indexes) are localrules (each stage's job is submitit's,
    # below) and `all` a target: no sbatch job
    for local in ("train", "train_with_ema", "merge_parts", "all"):
        assert not any("slurm_" in line for line in jobs.pop(local)), local
    for rule, lines in jobs.items():
        expected = "slurm_partition=gpus" if rule == "precompute" else "slurm_partition=cpus"
        assert all(expected in line for line in lines), (rule, lines)
        assert all(("slurm_account=lab" in line) == (rule != "precompute") for line in lines), (rule, lines)
    assert {"download", "convert", "train_vae", "precompute", "stage_samples", "report"} <= set(jobs)
    commands = (line.strip().removeprefix("Shell command:").strip() for line in result.stdout.splitlines())
    trains = [shlex.split(command) for command in commands if command.startswith("microdit train ")]
    assert len(trains) == 4
    assert all('launch.partition="big-gpus"' in args and 'launch.account="lab-train"' in args for args in trains)


def test_partitions_have_one_place():
    config = load("tiny")
    config["launch"]["partition"] = "gpu"
    (error,) = schema_errors(config, str(REPO / "config" / "schema.yaml"))
    assert error.startswith("launch:") and "slurm.train sets those" in error
    config = load("tiny")
    config["slurm"] = {"gpus": {"partition": "gpu"}}
    (error,) = schema_errors(config, str(REPO / "config" / "schema.yaml"))
    assert error.startswith("slurm.gpus: unknown key")


# ------------------------------------------------------------------------------------------------ placeholders
def test_placeholders_are_found_at_any_depth():
    config = {"a": {"b": ["x", "<a list item>"], "c": "<fill>"}, "d": "a <b> c", "e": 3}
    assert placeholders(config) == [("a.b.1", "<a list item>"), ("a.c", "<fill>")]



def test_every_stage_driver_runs_where_snakemake_runs(tmp_path):
    """A stage's job submits its own SLURM job and waits on it: as an sbatch job of its own it would hold a node's
    share for days (a dry run prints no sign of it, so Snakemake's own rule table is read)."""
    script = ("import json, pathlib, sys\n"
              "from snakemake.api import SnakemakeApi\n"
              "from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings\n"
              "with SnakemakeApi(OutputSettings(quiet={'all'})) as api:\n"
              "    api_workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile="
              "pathlib.Path(sys.argv[1]), config_settings=ConfigSettings(configfiles=[pathlib.Path(sys.argv[2])]),"
              " workdir=pathlib.Path(sys.argv[3]))\n"
              "    api_workflow.dag()\n"
              "    workflow = api_workflow._workflow\n"
              "    print(json.dumps([rule.name for rule in workflow.rules if rule.name in workflow._localrules]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(REPO / "Snakefile"), str(REPO / "config" / "tiny.yaml"),
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    local = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert {"train", "train_with_ema", "merge_parts"} <= local and "precompute" not in local
