"""Precompute with a tiny random AutoencoderKL and the MiniLM text encoder: shapes, determinism, restart, bad input."""
import json
from dataclasses import replace
import os

import numpy as np
import pytest

from data_helpers import run
from microdit.data import mds
from microdit.data.convert import Rules, convert
from microdit.data.precompute import Config, merge, precompute, run_rank
from microdit.errors import UserError


@pytest.fixture(scope="module")
def images_mds(tmp_path_factory):
    """6 synthetic images in 3 MDS shards (3 convert workers), i.e. 3 precompute units."""
    root = tmp_path_factory.mktemp("images")
    assert run(["download", "synthetic", "--out", str(root / "wds"), "--num-samples", "6", "--shard-size", "2",
                "--min-size", "24", "--max-size", "48"]) == 0
    convert(root / "wds", root / "mds", Rules(min_side=0, resize_to=0), workers=3)
    return root / "mds"


def config(vae_dir: str) -> Config:
    return Config(vae=vae_dir, text_encoder="minilm", resolutions=(16, 32), batch_size=2, max_length=8, seed=7)


def shard_bytes(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/shard.*.mds"))}


def test_cli_columns_shapes_and_stats(images_mds, tiny_vae_dirs, tmp_path, capsys):
    assert run(["precompute", "--input", str(images_mds), "--out", str(tmp_path / "lat"), "--vae", tiny_vae_dirs[4],
                "--text-encoder", "minilm", "--resolutions", "16", "32", "--max-length", "8", "--batch-size", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6
    stats = json.loads((tmp_path / "lat" / "precompute_stats.json").read_text())
    assert stats["images"] == 6 and stats["images_per_second_per_process"] > 0
    samples = [s for r in mds.shard_readers(tmp_path / "lat") for s in mds.iter_samples(r)]
    inputs = [s for r in mds.shard_readers(images_mds) for s in mds.iter_samples(r)]
    captions = [s["caption"] for s in inputs]
    small = sum(min(s["width"], s["height"]) < 32 for s in inputs)  # 24-48 px images: some below 32 px
    assert 0 < small < 6 and stats["upsampled"] == {"16": 0, "32": small}
    assert [s["caption"] for s in samples] == captions
    first = samples[0]
    assert first["caption_latents"].shape == (1, 8, 384) and first["caption_latents"].dtype == np.float16
    assert first["latents_16"].shape == (4, 8, 8) and first["latents_32"].shape == (4, 16, 16)
    assert first["latents_32"].dtype == np.float16 and np.isfinite(first["latents_32"]).all()


def test_sixteen_channel_vae(images_mds, tiny_vae_dirs, tmp_path):
    precompute(str(images_mds), str(tmp_path / "lat"), config(tiny_vae_dirs[16]))
    sample = next(mds.iter_samples(mds.shard_readers(tmp_path / "lat")[0]))
    assert sample["latents_16"].shape == (16, 8, 8)


def test_deterministic_whatever_the_split_and_restartable(images_mds, tiny_vae_dirs, tmp_path, monkeypatch):
    cfg = config(tiny_vae_dirs[4])
    precompute(str(images_mds), str(tmp_path / "one"), cfg)
    reference = shard_bytes(tmp_path / "one")
    assert len(reference) == 3

    # two ranks writing their own units, merged afterwards: the same bytes as one process
    assert run_rank(str(images_mds), str(tmp_path / "two"), cfg, rank=1, world=2) == 1
    with pytest.raises(UserError, match="not finished"):
        merge(str(images_mds), str(tmp_path / "two"), cfg)
    assert run_rank(str(images_mds), str(tmp_path / "two"), cfg, rank=0, world=2) == 2
    merge(str(images_mds), str(tmp_path / "two"), cfg)
    assert shard_bytes(tmp_path / "two") == reference

    # a crash mid-unit: the unit's directory is missing, a partial one lies around; only that unit is redone
    out = tmp_path / "one"
    for path in (out / "00001").iterdir():
        path.unlink()
    (out / "00001").rmdir()
    (out / ".00001.partial").mkdir()
    (out / ".00001.partial" / "shard.00000.mds").write_bytes(b"garbage")
    before = {u: os.stat(out / u / "index.json").st_mtime_ns for u in ("00000", "00002")}
    assert run_rank(str(images_mds), str(out), cfg) == 1
    merge(str(images_mds), str(out), cfg)
    assert {u: os.stat(out / u / "index.json").st_mtime_ns for u in before} == before
    assert shard_bytes(out) == reference and not (out / ".00001.partial").exists()
    assert mds.count(out) == 6

    # units of another config are not taken for finished ones: moved aside, every unit encoded anew
    precompute(str(images_mds), str(out), cfg)
    assert shard_bytes(out) == reference and not list(tmp_path.glob("one.stale-*"))  # same config: kept
    precompute(str(images_mds), str(out), replace(cfg, seed=8))
    (stale,) = tmp_path.glob("one.stale-*")
    assert shard_bytes(stale) == reference and shard_bytes(out) != reference and mds.count(out) == 6

    # nor are units encoded in fp32 on the CPU taken for a GPU's bf16 ones (a GPU run is only planned here)
    import microdit.data.precompute as precompute_module
    monkeypatch.setattr(precompute_module, "run_rank", lambda *args, **kwargs: 0)
    monkeypatch.setattr(precompute_module, "merge", lambda *args: {})
    precompute(str(images_mds), str(out), replace(cfg, seed=8), device="cuda")
    assert len(list(tmp_path.glob("one.stale-*"))) == 2


def test_missing_index_and_truncated_shard_are_named(images_mds, tiny_vae_dirs, tmp_path):
    cfg = config(tiny_vae_dirs[4])
    with pytest.raises(UserError, match="index.json: missing"):
        precompute(str(tmp_path), str(tmp_path / "lat"), cfg)
    broken = tmp_path / "broken"
    convert(images_mds.parent / "wds", broken, Rules(min_side=0, resize_to=0))
    shard = broken / "00000" / "shard.00000.mds"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(UserError, match="shard.00000.mds: truncated"):
        precompute(str(broken), str(tmp_path / "lat"), cfg)
    assert not (tmp_path / "lat").exists()


def test_a_dataset_without_samples_is_a_clear_error(tmp_path, tiny_vae_dirs):
    assert run(["download", "synthetic", "--out", str(tmp_path / "wds"), "--num-samples", "2", "--min-size", "24",
                "--max-size", "32"]) == 0
    convert(tmp_path / "wds", tmp_path / "mds", Rules(min_side=10_000))  # every image filtered out
    with pytest.raises(UserError, match="no samples"):
        precompute(str(tmp_path / "mds"), str(tmp_path / "lat"), config(tiny_vae_dirs[4]))
    assert not (tmp_path / "lat" / "index.json").exists()


def test_a_wrong_column_is_named_and_a_run_that_skips_every_sample_writes_no_latents(images_mds, tiny_vae_dirs,
                                                                                      tmp_path):
    from dataclasses import replace

    cfg = config(tiny_vae_dirs[4])
    with pytest.raises(UserError, match="no column 'caption_syn_pixart_llava15' \\(--caption-column\\)"):
        precompute(str(images_mds), str(tmp_path / "lat"), replace(cfg, caption_column="caption_syn_pixart_llava15"))
    assert not (tmp_path / "lat").exists()
    with pytest.raises(UserError, match="every sample was skipped .*'bad_caption': 6"):
        precompute(str(images_mds), str(tmp_path / "lat"), replace(cfg, caption_column="jpg"))  # no caption text
    assert not (tmp_path / "lat" / "index.json").exists()
