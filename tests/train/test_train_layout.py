"""Where a process sits, as each launch path leaves it: torchrun, submitit (SLURM or local processes), a plain srun,
and a 2-node SLURM job (what its rendezvous and ranks would be: CI's SLURM has one node)."""
import os

import pytest

from microdit.train.distributed import LAYOUT_VARIABLES, export_layout


@pytest.fixture
def environ():
    """A process environment with no launcher's variables; returns a setter for some. The whole environment comes
    back afterwards: export_layout writes to it, and a WORLD_SIZE left behind would make every later
    StreamingDataset of this process wait for ranks that never come."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key in LAYOUT_VARIABLES or key.startswith(("SLURM_", "SUBMITIT_")):
            del os.environ[key]

    def set_variables(**values):
        os.environ.update({key: str(value) for key, value in values.items()})
    yield set_variables
    os.environ.clear()
    os.environ.update(saved)


def layout() -> dict:
    return {key: os.environ.get(key) for key in LAYOUT_VARIABLES}


def test_torchrun_leaves_its_own_variables(environ):
    environ(RANK=3, WORLD_SIZE=8, LOCAL_RANK=3, LOCAL_WORLD_SIZE=4, MASTER_ADDR="n1", MASTER_PORT=29400,
            SLURM_JOB_ID=5, SLURM_PROCID=0, SLURM_NTASKS=1, SLURM_STEP_ID=0)  # torchrun inside a one-task srun
    assert export_layout()
    assert layout() == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4",
                        "MASTER_ADDR": "n1", "MASTER_PORT": "29400"}


def slurm_task(environ, rank: int, **extra) -> None:
    """Task `rank` of an srun of 16 tasks over gpu-node[07-08] (8 per node), as SLURM describes it."""
    environ(SLURM_JOB_ID=4242, SLURM_NTASKS=16, SLURM_JOB_NUM_NODES=2, SLURM_NODEID=rank // 8, SLURM_PROCID=rank,
            SLURM_LOCALID=rank % 8, SLURM_JOB_NODELIST="gpu-node[07-08]", SLURM_STEP_ID=0, **extra)


@pytest.mark.parametrize("executor", ["slurm", None])  # submitit's job, or a task of the user's own srun
def test_a_two_node_slurm_job_meets_on_its_first_node(environ, executor):
    slurm_task(environ, 9, **({"SUBMITIT_EXECUTOR": executor} if executor else {}))
    assert export_layout()
    found = layout()
    port = found.pop("MASTER_PORT")
    assert found == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
                     "MASTER_ADDR": "gpu-node07"}
    # every task of the job derives the same port from the job id, without talking first
    for key in LAYOUT_VARIABLES:
        del os.environ[key]
    slurm_task(environ, 0)
    export_layout()
    assert os.environ["MASTER_PORT"] == port and 20000 <= int(port) <= 60000


def test_a_requeued_job_replaces_the_values_its_first_attempt_left(environ):
    slurm_task(environ, 9, SUBMITIT_EXECUTOR="slurm", RANK=0, WORLD_SIZE=1, LOCAL_RANK=0)
    assert export_layout() and (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("9", "16")


def test_two_local_submitit_tasks_are_one_node(environ):
    environ(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID=77, SUBMITIT_LOCAL_NTASKS=2,
            SUBMITIT_LOCAL_JOB_NUM_NODES=1, SUBMITIT_LOCAL_NODEID=0, SUBMITIT_LOCAL_GLOBALID=1,
            SUBMITIT_LOCAL_LOCALID=1)
    assert export_layout()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_WORLD_SIZE"]) == ("1", "2", "2")


@pytest.mark.parametrize("variables", [
    {},  # a plain process
    {"SLURM_JOB_ID": 5, "SLURM_PROCID": 0, "SLURM_NTASKS": 8},  # the batch script of an 8-task job, not a task
    {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": 7, "SUBMITIT_LOCAL_NTASKS": 1},
])
def test_a_single_process_sets_nothing(environ, variables):
    environ(**variables)
    assert not export_layout()
    assert layout() == dict.fromkeys(LAYOUT_VARIABLES)
