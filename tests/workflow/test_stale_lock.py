"""`make demo` after a killed demo: a stale Snakemake lock is removed, a live run's lock is not."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microdit.snakemake_lock import held_locks, is_snakemake, unlock_stale

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
ARGS = ["--cores", "1", "--quiet"]
# the job waits until the test lets it finish, so the first run is still working when it is killed
SNAKEFILE = 'rule all:\n    output: "done.txt"\n    shell: "while [ ! -e go ]; do sleep 0.1; done; touch {output}"\n'


@pytest.fixture
def killed_run(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    run = subprocess.Popen([SNAKEMAKE, *ARGS], cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not held_locks(tmp_path):
            assert run.poll() is None and time.monotonic() < deadline, "snakemake never took its lock"
            time.sleep(0.1)
        yield tmp_path, run
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)  # its own session: snakemake and the job's shell
        run.wait()


def test_a_live_run_keeps_its_lock_and_a_killed_one_is_unlocked(killed_run, capsys):
    workdir, run = killed_run
    assert unlock_stale(SNAKEMAKE, ARGS, workdir) == 1 and held_locks(workdir)
    said = capsys.readouterr().err
    assert f"Snakemake is running here (pid {run.pid}" in said and f"{SNAKEMAKE} --cores 1 --quiet --unlock" in said

    os.killpg(run.pid, signal.SIGKILL)  # kill -9 of the demo
    run.wait()
    again = subprocess.run([SNAKEMAKE, *ARGS], cwd=workdir, capture_output=True, text=True)
    assert again.returncode != 0 and "cannot be locked" in again.stdout + again.stderr  # the probe

    assert unlock_stale(SNAKEMAKE, ARGS, workdir) == 0 and not held_locks(workdir)
    assert "a stale Snakemake lock (no Snakemake process runs here" in capsys.readouterr().err
    (workdir / "go").touch()
    assert subprocess.run([SNAKEMAKE, *ARGS], cwd=workdir, capture_output=True).returncode == 0
    assert (workdir / "done.txt").is_file()
    assert unlock_stale(SNAKEMAKE, ARGS, workdir) == 0 and capsys.readouterr().err == ""  # no lock: nothing said


def test_what_counts_as_a_snakemake_process():
    assert is_snakemake(["/x/.venv/bin/snakemake", "--cores", "1"])
    assert is_snakemake(["/x/.venv/bin/python3.11", "/x/.venv/bin/snakemake", "--profile", "p"])
    assert is_snakemake(["python", "-m", "snakemake", "--target-jobs", "a"])  # a job Snakemake started
    assert not is_snakemake(["/x/.venv/bin/python", "/x/.venv/bin/microdit", "unlock-stale", "--snakemake",
                             "snakemake"])
    assert not is_snakemake(["vim", "Snakefile"]) and not is_snakemake([""])


def test_make_demo_unlocks_with_the_arguments_it_runs_snakemake_with():
    dry = subprocess.run(["make", "-n", "demo", "STAMP="], cwd=REPO, capture_output=True, text=True, check=True)
    unlock, demo = [line for line in dry.stdout.splitlines() if "snakemake " in line]
    assert "microdit unlock-stale --snakemake" in unlock
    assert unlock.split(" -- ", 1)[1] == demo.split("bin/snakemake ", 1)[1]
