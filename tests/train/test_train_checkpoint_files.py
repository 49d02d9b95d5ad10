"""A stage's checkpoint files under faults: a save killed mid-write, pruning's peak, a broken newest checkpoint."""
import os
import signal
import subprocess
import sys

import pytest

import microdit.train.state as state_module
from microdit.checkpoint import CheckpointError
from microdit.train.distributed import DistInfo
from microdit.train.state import checkpoint_path, list_checkpoints
from microdit.train.trainer import Trainer
from train_helpers import Killed, kill_after, tiny_config


def interrupted_run(out, steps=6, after=5, **changes):
    """A stage stopped after step `after`: its checkpoints are those of the steps before, by save_every 2."""
    cfg = tiny_config(out, steps=steps, **changes)
    with pytest.raises(Killed):
        Trainer(cfg, DistInfo(), callbacks=[kill_after(after)]).run()
    return cfg


# a checkpoint save in a process that is killed (SIGKILL: no handler runs) once it has written part of the file
KILLED_SAVE = """
import os, signal, sys
from microdit.files import atomic_write

def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"half a checkpoint" * 1000)
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(sys.argv[1], write)
"""


def test_a_save_killed_mid_write_leaves_no_file_after_the_next_start(tmp_path, capsys):
    cfg = interrupted_run(tmp_path, after=3)
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(checkpoint_path(tmp_path, 4))])
    assert done.returncode == -signal.SIGKILL
    (leaked,) = (tmp_path / "checkpoints").glob(".step_000000004.pt.*.tmp")  # what the probe found
    resumed = Trainer(cfg, DistInfo())
    assert resumed.step == 2 and not leaked.exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []
    assert "removed 1 half-written checkpoint file(s) of a save that was killed" in capsys.readouterr().err
    assert resumed.run()["global_step"] == 6


@pytest.mark.parametrize("keep, seen", [
    (2, [[], ["step_000000002.pt"], ["step_000000004.pt"]]),  # K files at the peak, not K + 1
    (1, [[], ["step_000000002.pt"], ["step_000000004.pt"]]),  # the only one stays until the new one is in place
    (3, [[], ["step_000000002.pt"], ["step_000000002.pt", "step_000000004.pt"]]),
])
def test_pruning_makes_room_before_a_save_but_keeps_a_valid_checkpoint(tmp_path, monkeypatch, keep, seen):
    writes = []
    real = state_module.atomic_write

    def watching(path, write):
        writes.append([p.name for p in list_checkpoints(tmp_path)])
        real(path, write)

    monkeypatch.setattr(state_module, "atomic_write", watching)
    Trainer(tiny_config(tmp_path, steps=6, keep_checkpoints=keep), DistInfo()).run()
    assert writes == seen
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002.pt", "step_000000004.pt",
                                                            "step_000000006.pt"][-keep:]


def truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def test_a_broken_newest_checkpoint_falls_back_to_the_newest_valid_one(tmp_path, capsys):
    cfg = interrupted_run(tmp_path)
    newest = checkpoint_path(tmp_path, 4)
    truncate(newest)
    resumed = Trainer(cfg, DistInfo())
    assert resumed.step == 2 and resumed.last_checkpoint == checkpoint_path(tmp_path, 2)
    err = capsys.readouterr().err
    assert f"{newest}: not a readable training checkpoint" in err
    assert "renamed to step_000000004.pt.corrupt, resuming the newest valid checkpoint, step_000000002.pt" in err
    assert (tmp_path / "checkpoints" / "step_000000004.pt.corrupt").is_file()
    assert resumed.run()["global_step"] == 6
    # the broken file is neither resumed nor kept by pruning in place of a valid one
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000004.pt", "step_000000006.pt"]


def test_no_valid_checkpoint_is_one_error_naming_the_newest(tmp_path):
    cfg = interrupted_run(tmp_path)
    for step in (2, 4):
        truncate(checkpoint_path(tmp_path, step))
    with pytest.raises(CheckpointError, match="step_000000004.pt: not a readable training checkpoint .*; no older "
                                              r"checkpoint reads back either \(start afresh with --resume none\)"):
        Trainer(cfg, DistInfo())
    assert len(list_checkpoints(tmp_path)) == 2  # nothing renamed: the user decides
