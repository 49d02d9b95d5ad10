"""A stage's numbers and sample grids reach TensorBoard: event files beside metrics.jsonl that TensorBoard reads."""
import json

import pytest

from microdit.train.launch import launch
from train_helpers import heldout_shards, tiny_config, validation


def test_a_stage_writes_tensorboard_events_beside_its_metrics_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "stage"
    cfg = tiny_config(out, steps=2, validation=validation(heldout_shards(tmp_path / "held_out"), every=1),
                      samples={"every": 1, "num": 4, "steps": 1})
    assert launch(cfg) == 0
    # beside the live metrics log, kept with the checkpoints; what `tensorboard --logdir` finds below the run
    events = EventAccumulator(str(out / "checkpoints"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == {"loss", "lr", "grad_norm", "img_per_s", "val_loss"}  # no MFU or memory on a CPU
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for tag in ("loss", "lr", "val_loss"):
        expected = [line for line in logged if tag in line]
        assert [e.step for e in events.Scalars(tag)] == [line["step"] for line in expected]
        assert [e.value for e in events.Scalars(tag)] == pytest.approx([line[tag] for line in expected], rel=1e-6)
    assert tags["images"] == ["samples"]
    grids = events.Images("samples")
    assert [image.step for image in grids] == [1, 2] and grids[0].width > 0
