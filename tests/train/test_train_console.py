"""What a stage shows where it is launched: on the local cluster the driver repeats the job's progress lines."""
from microdit.train.launch import launch
from train_helpers import tiny_config


def test_a_local_stage_shows_its_progress_on_the_driver_s_console(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MICRODIT_PROGRESS_EVERY", "0")  # the job inherits it: a progress line at every step
    cfg = tiny_config(tmp_path, steps=2, progress=True,
                      launch={"cluster": "local", "cpus_per_task": 1, "timeout_min": 10})
    assert launch(cfg) == 0
    err = capsys.readouterr().err.splitlines()
    echoed = [line for line in err if line.startswith("test:")]
    assert "test: first step took" in " ".join(echoed)
    assert echoed[-1].startswith("test: 100%|") and "| 2/2 [" in echoed[-1], err
    assert all("\r" not in line and len(line) <= 200 for line in err), err
