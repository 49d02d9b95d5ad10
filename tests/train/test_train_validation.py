"""The held-out loss (SPEC §3.4): fixed draws per sample, independent of batching and ranks, logged by the trainer."""
import contextlib
import json

import numpy as np
import pytest
import torch

from microdit.diffusion.edm import EDMConfig, denoise, loss_weight
from microdit.errors import UserError
from microdit.train.distributed import DistInfo
from microdit.train.state import run_fingerprint
from microdit.train.config import to_dict
from microdit.train.trainer import Trainer, build_model
from microdit.train.validation import HeldOutLoss, fixed_draw
from train_helpers import heldout_shards, tiny_config, validation, weights


def nullcontext():
    return contextlib.nullcontext()


def test_the_heldout_loss_is_fixed_and_does_not_depend_on_batching_or_ranks(tmp_path):
    shards = heldout_shards(tmp_path / "val")
    cfg = tiny_config(tmp_path / "run", validation=validation(shards))
    edm = EDMConfig(p_mean=cfg.model.p_mean, p_std=cfg.model.p_std)
    torch.manual_seed(0)
    model = build_model(cfg).train()

    one = HeldOutLoss(cfg, edm, rank=0, world_size=1, device=torch.device("cpu"))
    value = one(model, nullcontext)
    assert model.training and one(model, nullcontext) == value  # the same draws every time; mode restored

    # by hand: the first 8 samples, each at its own fixed noise level and noise, unmasked, captions kept
    from microdit.data.mds import iter_samples, shard_readers
    samples = [s for r in shard_readers(shards) for s in iter_samples(r)][:8]
    model.eval()
    expected = []
    with torch.no_grad():
        for i, s in enumerate(samples):
            x = torch.from_numpy(np.array(s["latents_64"])).float()[None]
            y = torch.from_numpy(np.array(s["caption_latents"])).float()[None]
            sigma, noise = fixed_draw(5, i, edm, x.shape[1:])
            denoised, _ = denoise(model, x + sigma * noise[None], sigma.reshape(1), y, edm.sigma_data)
            expected.append((loss_weight(sigma, edm.sigma_data) * (denoised - x) ** 2).mean())
    model.train()
    assert value == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)

    other_batch = tiny_config(tmp_path / "run", validation=validation(shards, batch_size=8))
    rebatched = HeldOutLoss(other_batch, edm, 0, 1, torch.device("cpu"))
    assert rebatched(model, nullcontext) == pytest.approx(value, rel=1e-5)
    # two ranks (no process group here: each returns its own share's mean, the group averages them)
    halves = [HeldOutLoss(cfg, edm, rank, 2, torch.device("cpu"))(model, nullcontext) for rank in (0, 1)]
    assert sum(halves) / 2 == pytest.approx(value, rel=1e-5)
    # three ranks: 8 samples rounded down to 6, two each
    assert HeldOutLoss(cfg, edm, 0, 3, torch.device("cpu")).count == 6


def test_the_heldout_loss_compiles_nothing(tmp_path):
    from torch._dynamo.utils import counters

    from microdit.models.speed import compile_blocks

    cfg = tiny_config(tmp_path / "run", validation=validation(heldout_shards(tmp_path / "val")))
    model = build_model(cfg)
    eager = HeldOutLoss(cfg, EDMConfig(), 0, 1, torch.device("cpu"))(model, nullcontext)
    torch._dynamo.reset()
    counters.clear()
    compile_blocks(model)
    assert HeldOutLoss(cfg, EDMConfig(), 0, 1, torch.device("cpu"))(model, nullcontext) == pytest.approx(eager)
    assert counters["stats"]["unique_graphs"] == 0


def test_the_trainer_logs_the_heldout_loss_and_it_is_no_weight_setting(tmp_path):
    shards = heldout_shards(tmp_path / "val")
    cfg = tiny_config(tmp_path / "run", steps=5, log_every=4, validation=validation(shards))
    Trainer(cfg, DistInfo()).run()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 5]  # every 2 steps and at the end, on the log's lines
    assert all(np.isfinite(line["val_loss"]) and np.isfinite(line["loss"]) for line in lines)
    assert not any("val_loss_ema" in line for line in lines)  # no EMA in this stage
    plain = tiny_config(tmp_path / "run", steps=5, log_every=4)
    assert run_fingerprint(to_dict(plain)) == run_fingerprint(to_dict(cfg))  # adding it keeps the checkpoints


def test_with_an_ema_both_weights_are_scored_and_training_is_untouched(tmp_path):
    ema = {"decay": 0.5, "start_step": 1}
    watched = tiny_config(tmp_path / "watched", steps=4, ema=ema, validation=validation(heldout_shards(tmp_path / "v")))
    Trainer(watched, DistInfo()).run()
    Trainer(tiny_config(tmp_path / "plain", steps=4, ema=ema), DistInfo()).run()
    for name in ("final.safetensors", "ema.safetensors"):  # the swap restored the weights; no random draw was taken
        a, b = weights(tmp_path / "watched" / name), weights(tmp_path / "plain" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    lines = [json.loads(line) for line in (tmp_path / "watched" / "metrics.jsonl").read_text().splitlines()]
    scored = [line for line in lines if "val_loss" in line]
    assert [line["step"] for line in scored] == [2, 4]
    assert all(np.isfinite(line["val_loss_ema"]) and line["val_loss_ema"] != line["val_loss"] for line in scored)


def test_bad_validation_settings_are_named(tmp_path):
    with pytest.raises(UserError, match="validation.datadirs: expected a list"):
        tiny_config(tmp_path, validation={"every": 10})
    with pytest.raises(UserError, match="validation.num: must be > 0"):
        tiny_config(tmp_path, validation={"every": 10, "datadirs": ["x"], "num": 0})
    heldout_shards(tmp_path / "val")
    shards = heldout_shards(tmp_path / "val256", column="latents_32")
    cfg = tiny_config(tmp_path / "run", validation=validation(shards))
    with pytest.raises(UserError, match=r"val256/index.json has no latents_64"):
        HeldOutLoss(cfg, EDMConfig(), 0, 1, torch.device("cpu"))
    wrong_grid = tiny_config(tmp_path / "run", model={"latent_res": 16}, validation=validation(shards.replace(
        "val256", "val")))
    with pytest.raises(UserError, match=r"held-out latents \(4, 8, 8\) .* model takes \(4, 16, 16\)"):
        HeldOutLoss(wrong_grid, EDMConfig(), 0, 1, torch.device("cpu"))
    with pytest.raises(UserError, match="validation.resolution: must be > 0"):
        tiny_config(tmp_path, validation={"every": 10, "datadirs": ["x"]})  # random data: no resolution to take
    with pytest.raises(UserError, match="fewer than the 16 ranks"):
        HeldOutLoss(tiny_config(tmp_path / "run", validation=validation(heldout_shards(tmp_path / "v2"))),
                    EDMConfig(), 0, 16, torch.device("cpu"))


def test_sample_grids_show_the_prompts_encoded_and_decoded(tmp_path, tiny_vae_dir):
    from PIL import Image

    from microdit.models.encoders import create_text_encoder
    from microdit.train.callbacks import SampleGrid

    prompts = ["a red square", "two blue circles", "never shown: num is 2"]
    cfg = tiny_config(tmp_path, steps=2, model={"caption_channels": 384}, data={"text_encoder": "minilm"},
                      samples={"every": 2, "num": 2, "steps": 2, "prompts": prompts, "vae": str(tiny_vae_dir)})
    grid = SampleGrid(cfg.samples, cfg.out_dir, cfg.data.text_encoder, cfg.data.caption_len)
    trainer = Trainer(cfg, DistInfo(), callbacks=[grid])
    trainer.run()
    expected = create_text_encoder("minilm", cfg.data.caption_len).encode(prompts[:2])
    assert torch.equal(grid.captions(trainer.raw), expected)
    with Image.open(tmp_path / "samples" / "step_000000002.png") as image:
        assert image.size == (2 * (32 + 2) + 2, 32 + 4)  # two decoded 32 px images side by side (the VAE upsamples 4x)
    with pytest.raises(UserError, match="prompts and captions both given"):
        tiny_config(tmp_path, samples={"every": 2, "prompts": ["a"], "captions": str(tmp_path / "c.safetensors")})
    tiny_config(tmp_path, samples={"prompts": ["a"], "captions": "c.safetensors"})  # no grids: nothing to refuse


def test_heldout_time_is_left_out_of_the_rates_but_not_of_the_wall_time(monkeypatch):
    import microdit.train.metrics as metrics

    now = [100.0]  # a clock the test moves: 10 s pass, 5 of them scoring the held-out set
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    clock = metrics.Throughput(None, None, 1)
    now[0] += 10.0
    clock.add(100)
    clock.exclude(5.0)
    assert (clock.mean_rate(), clock.elapsed(), clock.report()["img_per_s"]) == (20.0, 10.0, 20.0)
