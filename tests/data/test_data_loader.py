"""The training loader: natural-size and proportional mixing, caption dropout, float16 batches, mid-epoch resume."""
import gc
import json
from collections import Counter

import numpy as np
import pytest
import torch
from streaming import MDSWriter

from microdit.data.loader import build_latents_loader, clean_stale_shared_memory
from microdit.errors import UserError

COLUMNS = {"caption": "str", "caption_latents": "ndarray:float16:1,4,8", "latents_16": "ndarray:float16:4,2,2"}


def latents_dataset(path, n: int, stream: int):
    """n samples whose caption latents carry (stream, index) so batches can be traced back."""
    with MDSWriter(out=str(path), columns=COLUMNS, compression=None) as writer:
        for i in range(n):
            caption = np.zeros((1, 4, 8), np.float16)
            caption[0, 0, :2] = stream, i
            writer.write({"caption": f"s{stream} {i}", "caption_latents": caption,
                          "latents_16": np.full((4, 2, 2), stream, np.float16)})
    return str(path)


def ids(batches) -> list[tuple[int, int]]:
    return [(int(s), int(i)) for b in batches for s, i in b["caption_latents"][:, 0, 0, :2].tolist()]


@pytest.fixture
def loader_factory(isolated_streaming):
    made = []

    def make(*args, **kwargs):
        made.append(build_latents_loader(*args, num_workers=0, **kwargs))
        return made[-1]

    yield make
    made.clear()
    gc.collect()  # releases the datasets' shared memory before the next test


def test_natural_size_mixing_batches_and_caption_dropout(tmp_path, loader_factory):
    dirs = [latents_dataset(tmp_path / "a", 120, 0), latents_dataset(tmp_path / "b", 40, 1)]
    loader = loader_factory(dirs, resolution=16, batch_size=16, cap_drop_prob=0.25, seed=3)
    batches = list(loader)
    first = batches[0]
    assert first["image_latents"].shape == (16, 4, 2, 2) and first["caption_latents"].shape == (16, 1, 4, 8)
    # latents stay in their stored float16 (half the bytes through the workers); the trainer converts on the device
    assert first["image_latents"].dtype == first["caption_latents"].dtype == torch.float16
    assert first["drop_caption_mask"].dtype == torch.float32 and first["drop_caption_mask"].shape == (16,)
    assert Counter(s for s, _ in ids(batches)) == {0: 120, 1: 40}
    masks = torch.cat([b["drop_caption_mask"] for b in batches])
    assert set(masks.tolist()) == {0.0, 1.0} and 0.15 < 1 - masks.mean().item() < 0.35
    # image latents really come from the sample's own stream
    assert all((b["image_latents"][:, 0, 0, 0] == b["caption_latents"][:, 0, 0, 0]).all() for b in batches)


def test_configured_proportions(tmp_path, loader_factory):
    dirs = [latents_dataset(tmp_path / "a", 80, 0), latents_dataset(tmp_path / "b", 80, 1)]
    counts = Counter(s for s, _ in ids(loader_factory(dirs, 16, batch_size=16, proportions=[0.75, 0.25])))
    assert abs(counts[0] - 120) <= 2 and abs(counts[1] - 40) <= 2


def test_resume_mid_epoch_continues_where_it_stopped(tmp_path, loader_factory):
    dirs = [latents_dataset(tmp_path / "a", 64, 0), latents_dataset(tmp_path / "b", 32, 1)]
    loader = loader_factory(dirs, 16, batch_size=8, cap_drop_prob=0.5, seed=5)
    iterator = iter(loader)
    seen = [next(iterator) for _ in range(4)]
    state = loader.state_dict()
    rest = list(iterator)
    del loader, iterator
    gc.collect()

    resumed = loader_factory(dirs, 16, batch_size=8, cap_drop_prob=0.5, seed=5)
    resumed.load_state_dict(state)
    again = list(resumed)
    assert state["sample_in_epoch"] == 32 and ids(again) == ids(rest)
    assert torch.equal(torch.cat([b["drop_caption_mask"] for b in again]),
                       torch.cat([b["drop_caption_mask"] for b in rest]))
    assert sorted(ids(seen) + ids(again)) == sorted([(0, i) for i in range(64)] + [(1, i) for i in range(32)])


def test_missing_index_and_a_resolution_without_latents_are_named(tmp_path, isolated_streaming):
    with pytest.raises(UserError, match="index.json: missing"):
        build_latents_loader([str(tmp_path)], 16, batch_size=4, num_workers=0)
    data = latents_dataset(tmp_path / "a", 4, 0)
    with pytest.raises(UserError, match=f"{data}: no latents_256 or caption_latents column .*latents_16"):
        build_latents_loader([data], 256, batch_size=4, num_workers=0)


def test_stale_cleanup_skipped_while_a_dataset_is_alive(tmp_path, loader_factory):
    loader = loader_factory([latents_dataset(tmp_path / "a", 8, 0)], 16, batch_size=4)
    next(iter(loader))
    assert clean_stale_shared_memory() is False


def _clean_on_rank(rank: int, store: str, in_use_on: tuple, out: str) -> None:
    """One of two gloo ranks: its node sees streaming memory in use or not; streaming's cleaner (which ends in a
    barrier) is stood in for, so that this test unlinks nothing of the concurrent tests' datasets."""
    import datetime

    import torch.distributed as dist

    from microdit.data import loader

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    loader.shared_memory_in_use = lambda: rank in in_use_on
    loader.streaming_clean_stale_shared_memory = dist.barrier
    cleaned = loader.clean_stale_shared_memory()
    dist.barrier()  # a rank that skipped the cleaner's barrier would pair this one with it, and the other hang
    with open(f"{out}.{rank}", "w") as f:
        f.write(str(cleaned))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("in_use_on, cleaned", [((1,), "False"), ((), "True")])
def test_every_rank_takes_the_same_cleanup_branch(tmp_path, in_use_on, cleaned):
    torch.multiprocessing.spawn(_clean_on_rank, args=(str(tmp_path / "store"), in_use_on, str(tmp_path / "out")),
                                nprocs=2)
    assert [(tmp_path / f"out.{rank}").read_text() for rank in (0, 1)] == [cleaned, cleaned]


def test_bench_loader_times_synthetic_paper_layout_shards(tmp_path, isolated_streaming, capsys, monkeypatch):
    from microdit.cli import main

    monkeypatch.chdir(tmp_path)  # the shards are kept in results/bench/
    args = ["bench", "loader", "--samples", "48", "--resolution", "64", "--batch", "4", "--workers", "0"]
    assert main(args) == 0
    assert main(args) == 0  # the shards are reused, not rewritten
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and all(r["img_per_s"] > 0 and r["batches"] == 10 for r in rows)
    assert (tmp_path / "results/bench/loader_shards_64px/index.json").exists()
    # float16 caption (1x77x1024) and latents (4x8x8) and a float32 caption-drop flag: the paper's bytes per image
    assert rows[0]["batch_bytes_per_img"] == 2 * (77 * 1024 + 4 * 8 * 8) + 4
