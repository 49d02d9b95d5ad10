"""Stages over MDS latents: a full init of a stage that reads the same stream goes on where the previous one stopped."""
import gc
import shutil
import tempfile

import pytest
import torch

import microdit.train.trainer as trainer_module
from microdit.train.distributed import DistInfo
from microdit.train.trainer import Trainer
from train_helpers import numbered_latents, tiny_config

SAMPLES = 48


@pytest.fixture
def seen(tmp_path, monkeypatch):
    """Sample ids in the order the loss saw them (each sample's latents hold its id), with streaming's locks kept
    in this test's folder."""
    locks = tmp_path / "streaming_locks"
    locks.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(locks))
    ids = []
    loss = trainer_module.denoising_loss

    def recording(model, batch, *args):
        if batch["latents"].dtype == torch.float16:  # the loader's (the FLOP count's example batch is float32)
            ids.extend(int(v) for v in batch["latents"][:, 0, 0, 0].tolist())
        return loss(model, batch, *args)

    monkeypatch.setattr(trainer_module, "denoising_loss", recording)
    yield ids
    gc.collect()  # releases the last dataset's shared memory


def train(out_dir, datadir: str, **changes) -> None:
    data = {"kind": "mds", "options": {"datadirs": [datadir], "resolution": 64, "num_workers": 0}}
    Trainer(tiny_config(out_dir, data=data, save_every=3, **changes), DistInfo()).run()
    gc.collect()  # streaming refuses a second live dataset on the same shards


def by_step(ids: list[int]) -> list[list[int]]:
    return [sorted(ids[i:i + 4]) for i in range(0, len(ids), 4)]  # global batch 4


def test_a_full_init_continues_the_data_stream_it_shares_and_starts_anew_on_other_data(tmp_path, seen):
    shards = numbered_latents(tmp_path / "latents", SAMPLES)
    train(tmp_path / "straight", shards, steps=6)
    straight, seen[:] = list(seen), []
    assert len(straight) == 6 * 4 and len(set(straight)) == 24  # one pass: no sample twice

    train(tmp_path / "s1", shards, steps=3)
    # another microbatch (accumulation 4 instead of 2) and no masking: the same stream, continued, each step's
    # global batch dealt into microbatches another way
    train(tmp_path / "s2", shards, steps=3, micro_batch=1, model={"train_mask_ratio": 0.0},
          init={"from": str(tmp_path / "s1"), "mode": "full"})
    assert by_step(seen) == by_step(straight) and seen[:12] == straight[:12]
    seen[:] = []

    # the same samples under another directory are other data to the config: a new pass from the start
    train(tmp_path / "s2_copy", shutil.copytree(shards, tmp_path / "copy"), steps=1,
          init={"from": str(tmp_path / "s1"), "mode": "full"})
    assert seen == straight[:4]


def test_a_stage_that_stopped_at_an_epoch_end_goes_on_into_the_next_epoch(tmp_path, seen):
    shards = numbered_latents(tmp_path / "latents", SAMPLES)
    steps_per_epoch = SAMPLES // 4  # global batch 4
    train(tmp_path / "s1", shards, steps=steps_per_epoch)
    first_epoch, seen[:] = list(seen), []
    assert sorted(first_epoch) == list(range(SAMPLES))
    # its checkpoint's position is the end of the epoch: the restored pass is empty, the next epoch follows
    train(tmp_path / "s2", shards, steps=3, init={"from": str(tmp_path / "s1"), "mode": "full"})
    assert len(seen) == 12 and len(set(seen)) == 12
