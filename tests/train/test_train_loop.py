"""The loop on CPU, in process: resume bit-exactness, accumulation equivalence, stage chaining, NaN stop."""
import os

import pytest
import torch

import microdit.train.trainer as trainer_module
from microdit.models.dit import create_dit
from microdit.models.layers import ExpertChoiceMoE
from microdit.train.config import load_stage_config
from microdit.train.distributed import DistInfo
from microdit.train.state import list_checkpoints
from microdit.train.trainer import Trainer, TrainingDiverged
from train_helpers import Killed, kill_after, tiny_config, weights


def run(cfg, **kwargs):
    return Trainer(cfg, DistInfo(), **kwargs).run()


def test_kill_and_resume_is_bit_identical(tmp_path):
    changes = dict(steps=6, ema={"decay": 0.8, "start_step": 2})
    run(tiny_config(tmp_path / "straight", **changes))
    interrupted = tiny_config(tmp_path / "resumed", **changes)
    with pytest.raises(Killed):
        run(interrupted, callbacks=[kill_after(5)])  # dies after step 5; newest checkpoint is step 4
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["step_000000002.pt", "step_000000004.pt"]
    resumed = Trainer(interrupted, DistInfo())
    assert resumed.step == 4
    stats = resumed.run()
    assert stats["global_step"] == 6
    for name in ("final.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "straight" / name), weights(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert load_stage_config(tmp_path / "resumed" / "stage.yaml") == interrupted  # what the exports were made with
    # keep newest K: step 2 pruned once step 6 was saved
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["step_000000004.pt", "step_000000006.pt"]


def test_a_finished_stage_returns_its_stats_and_re_exports_what_is_missing(tmp_path):
    cfg = tiny_config(tmp_path, steps=2, ema={"decay": 0.9})
    stats = run(cfg)
    final = tmp_path / "final.safetensors"
    written = final.stat().st_mtime_ns
    assert run(cfg) == stats and final.stat().st_mtime_ns == written  # nothing trained or written again
    (tmp_path / "stage.yaml").unlink()
    assert run(cfg)["global_step"] == 2 and load_stage_config(tmp_path / "stage.yaml") == cfg
    assert final.stat().st_mtime_ns != written and len(list_checkpoints(tmp_path)) == 1
    # what the workflow reads, removed as Snakemake removes a job's outputs: exported again, none trained
    ema, log = weights(tmp_path / "ema.safetensors"), (tmp_path / "metrics.jsonl").read_text()
    for name in ("ema.safetensors", "metrics.jsonl"):
        (tmp_path / name).unlink()
    assert run(cfg)["global_step"] == 2 and (tmp_path / "metrics.jsonl").read_text() == log
    assert {k: v.tolist() for k, v in weights(tmp_path / "ema.safetensors").items()} == {
        k: v.tolist() for k, v in ema.items()}
    assert [eval_json(line)["step"] for line in log.splitlines()] == [1, 2] and len(list_checkpoints(tmp_path)) == 1


def test_checkpoints_of_another_config_are_set_aside_not_resumed(tmp_path):
    with pytest.raises(Killed):
        run(tiny_config(tmp_path, steps=6), callbacks=[kill_after(5)])
    cosmetic = Trainer(tiny_config(tmp_path, steps=6, log_every=3), DistInfo())
    assert cosmetic.step == 4  # watching the run differently keeps its checkpoints
    recomputing = Trainer(tiny_config(tmp_path, steps=6, checkpoint_blocks=3, moe_dispatch="one_hot"), DistInfo())
    assert recomputing.step == 4  # so do memory and speed switches that leave the math alone
    assert {m.dispatch for m in recomputing.raw.modules() if isinstance(m, ExpertChoiceMoE)} == {"one_hot"}
    changed = Trainer(tiny_config(tmp_path, steps=6, optim={"lr": 5e-4}), DistInfo())
    assert changed.step == 0 and list_checkpoints(tmp_path) == []
    (stale,) = tmp_path.glob("checkpoints.stale-*")
    assert sorted(p.name for p in stale.glob("*.pt")) == ["step_000000002.pt", "step_000000004.pt"]
    assert (stale / "metrics.jsonl").is_file() and not (tmp_path / "metrics.jsonl").exists()  # no mixed log


def test_starting_afresh_sets_the_old_checkpoints_aside(tmp_path):
    with pytest.raises(Killed):
        run(tiny_config(tmp_path, steps=6), callbacks=[kill_after(5)])
    with pytest.raises(Killed):  # --resume none, then preempted after step 3: a requeue must resume this run
        run(tiny_config(tmp_path, steps=6), resume="none", callbacks=[kill_after(3)])
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002.pt"]  # not pruned against step 4
    assert Trainer(tiny_config(tmp_path, steps=6), DistInfo()).step == 2
    (stale,) = tmp_path.glob("checkpoints.stale-*")
    assert sorted(p.name for p in stale.glob("*.pt")) == ["step_000000002.pt", "step_000000004.pt"]


def deterministic_loss(model, batch, edm, mask_ratio):
    """A noise-free loss, so that only the batch split differs between runs."""
    sigma = torch.full((batch["latents"].shape[0],), 0.5)
    out = model(batch["latents"], sigma, batch["caption_latents"] * batch["drop_caption_mask"].reshape(-1, 1, 1, 1))
    return (out["sample"] - batch["latents"]).pow(2).mean()


def test_gradient_accumulation_matches_the_full_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "denoising_loss", deterministic_loss)
    results = []
    for micro in (4, 2, 1):
        out = tmp_path / f"micro{micro}"
        trainer = Trainer(tiny_config(out, micro_batch=micro, steps=3, model={"train_mask_ratio": 0.0}), DistInfo())
        assert trainer.accumulation == 4 // micro
        trainer.run()
        results.append(weights(out / "final.safetensors"))
    for other in results[1:]:
        assert all(torch.allclose(results[0][k], other[k], rtol=1e-4, atol=1e-6) for k in results[0])


def test_weights_only_chaining_resets_clock_and_optimizer_and_recomputes_pos_embed(tmp_path):
    run(tiny_config(tmp_path / "s2", steps=2))
    stage3 = tiny_config(tmp_path / "s3", steps=2, init={"from": str(tmp_path / "s2"), "mode": "weights"},
                         model={"latent_res": 16, "pos_interp_scale": 2.0},
                         schedule={"kind": "constant_warmup", "warmup_steps": 1})
    trainer = Trainer(stage3, DistInfo())
    assert (trainer.step, trainer.stage_start, trainer.end_step) == (0, 0, 2)
    assert trainer.optimizer.state_dict()["state"] == {}
    previous = weights(tmp_path / "s2" / "final.safetensors")
    loaded = trainer.raw.state_dict()
    fresh = create_dit("MicroDiT_Nano_2", input_size=16, caption_channels=32, pos_interp_scale=2.0, depth=3,
                       patch_mixer_depth=2)
    assert torch.equal(loaded["pos_embed"], fresh.pos_embed) and loaded["pos_embed"].shape[1] == 64
    assert all(torch.equal(loaded[k], v) for k, v in previous.items() if k != "pos_embed")
    assert trainer.run()["global_step"] == 2


def test_full_chaining_continues_clock_and_moments_with_new_lr(tmp_path):
    run(tiny_config(tmp_path / "s1", steps=4))
    new_optim = {"lr": 2e-4, "weight_decay": 0.0, "betas": [0.5, 0.9], "eps": 1e-3, "moe_half_lr": False}
    stage2 = tiny_config(tmp_path / "s2", steps=2, init={"from": str(tmp_path / "s1"), "mode": "full"},
                         optim=new_optim, schedule={"kind": "constant"}, model={"train_mask_ratio": 0.0})
    trainer = Trainer(stage2, DistInfo())
    assert (trainer.step, trainer.stage_start, trainer.end_step) == (4, 4, 6)
    # this stage's groups and hyperparameters, not the previous stage's (which halved the MoE layers' lr)
    (group,) = trainer.optimizer.param_groups
    assert (group["name"], group["lr_scale"], group["weight_decay"], tuple(group["betas"]), group["eps"]) == (
        "all", 1.0, 0.0, (0.5, 0.9), 1e-3)
    assert len(group["params"]) == len(list(trainer.raw.parameters()))
    saved = torch.load(tmp_path / "s1" / "checkpoints" / "step_000000004.pt", weights_only=True)
    moments = trainer.optimizer.state_dict()["state"]
    assert moments and all(int(s["step"]) == 4 for s in moments.values())
    assert torch.equal(saved["optimizer"]["state"]["x_embedder.proj.weight"]["exp_avg"],
                       trainer.optimizer.state[trainer.raw.x_embedder.proj.weight]["exp_avg"])
    stats = trainer.run()
    assert (stats["global_step"], stats["steps"], stats["images_seen"]) == (6, 2, 8)
    lrs = {line["lr"] for line in map(eval_json, (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines())}
    assert lrs == {2e-4}


def test_a_stage_retrains_when_the_stage_it_starts_from_was_retrained(tmp_path):
    run(tiny_config(tmp_path / "s1", steps=2))
    stage2 = dict(steps=2, init={"from": str(tmp_path / "s1"), "mode": "full"})
    run(tiny_config(tmp_path / "s2", **stage2))
    assert Trainer(tiny_config(tmp_path / "s2", **stage2), DistInfo()).step == 4  # nothing changed: finished
    run(tiny_config(tmp_path / "s1", steps=2, optim={"lr": 5e-4}))
    again = Trainer(tiny_config(tmp_path / "s2", **stage2), DistInfo())
    assert again.step == 2 and len(list(tmp_path.glob("s2/checkpoints.stale-*"))) == 1  # not its old weights


def test_recomputed_latents_are_other_data_and_copied_ones_are_not(tmp_path):
    from microdit.train.config import to_dict
    from microdit.train.state import run_fingerprint

    latents = tmp_path / "latents"
    latents.mkdir()
    (latents / "index.json").write_text('{"shards": []}')
    (latents / ".settings.sha256").write_text("encoded with vae A")
    settings = to_dict(tiny_config(tmp_path, data={"kind": "mds", "options": {"datadirs": [str(latents)]}}))
    before = run_fingerprint(settings)
    os.utime(latents / "index.json", (0, 0))
    assert run_fingerprint(settings) == before
    (latents / ".settings.sha256").write_text("encoded with vae B")
    assert run_fingerprint(settings) != before
    # the loader's speed options do not decide which samples arrive: they keep the checkpoints
    settings["data"]["options"].update(num_workers=8, pin_memory=True, prefetch_factor=4)
    assert run_fingerprint(settings) == run_fingerprint({**settings, "data": {**settings["data"], "options": {
        "datadirs": [str(latents)]}}})
    settings["data"]["options"]["resolution"] = 64
    assert run_fingerprint(settings) != run_fingerprint({**settings, "data": {**settings["data"], "options": {
        "datadirs": [str(latents)]}}})


def test_final_loss_is_the_last_logged_one_whether_trained_or_requeued_after_the_last_checkpoint(tmp_path):
    straight = run(tiny_config(tmp_path / "straight", steps=4, log_every=2))
    logged = eval_json((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["step"] == 4 and straight["final_loss"] == logged["loss"]  # the window's mean, not step 4's
    with pytest.raises(Killed):  # preempted between the last checkpoint and the export
        run(tiny_config(tmp_path, steps=4), callbacks=[kill_after(4)])
    stats = run(tiny_config(tmp_path, steps=4))
    last = eval_json((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and stats["final_loss"] == last["loss"]
    assert stats["mean_img_per_s"] > 0 and stats["first_step_s"] is None


def test_a_full_init_needs_a_finished_stage_of_the_same_shapes(tmp_path):
    from microdit.errors import UserError

    with pytest.raises(Killed):
        run(tiny_config(tmp_path / "s1", steps=4), callbacks=[kill_after(3)])
    continuing = {"init": {"from": str(tmp_path / "s1"), "mode": "full"}, "steps": 2}
    with pytest.raises(UserError, match="has not finished"):
        Trainer(tiny_config(tmp_path / "s2", **continuing), DistInfo())
    run(tiny_config(tmp_path / "s1", steps=4))
    with pytest.raises(UserError, match="another resolution: continue with init mode 'weights'.*pos_embed"):
        Trainer(tiny_config(tmp_path / "s2", model={"latent_res": 16}, **continuing), DistInfo())


def eval_json(line):
    import json
    return json.loads(line)


@pytest.mark.parametrize("log_every", [1, 4])
def test_nan_loss_stops_naming_step_and_last_checkpoint(tmp_path, monkeypatch, log_every):
    """Losses are read at log and checkpoint steps only (the host does not wait for every step), yet the stop names
    the first bad step and no checkpoint is written after it."""
    real = trainer_module.denoising_loss
    calls = {"n": 0}

    def poisoned(model, batch, edm, mask_ratio):
        calls["n"] += 1
        loss = real(model, batch, edm, mask_ratio)
        return loss * float("nan") if calls["n"] > 2 * 2 + 1 else loss  # 2 microbatches per step; NaN in step 3

    monkeypatch.setattr(trainer_module, "denoising_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3; last good checkpoint: .*step_000000002\.pt"):
        run(tiny_config(tmp_path, steps=6, log_every=log_every))
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_000000002.pt"]


def test_a_non_finite_gradient_stops_before_its_update_is_saved(tmp_path):
    """Step 2's loss is finite (it is computed before the update) but its gradient is not: the clipped update makes
    the weights NaN, so the stop names step 2 and step 2's checkpoint is never written."""
    trainer = Trainer(tiny_config(tmp_path, steps=4, save_every=2, log_every=4), DistInfo())
    trainer.raw.x_embedder.proj.bias.register_hook(lambda grad: grad * float("nan") if trainer.step == 1 else grad)
    with pytest.raises(TrainingDiverged, match=r"gradient norm is nan at step 2; last good checkpoint: none saved"):
        trainer.run()
    assert list_checkpoints(tmp_path) == []


def test_the_host_reads_losses_at_the_first_log_and_checkpoint_steps_only(tmp_path, monkeypatch):
    reads = []
    real = Trainer._read_losses

    def counted(self, window):
        reads.append([step for step, *_ in window])
        return real(self, window)

    monkeypatch.setattr(Trainer, "_read_losses", counted)
    run(tiny_config(tmp_path, steps=7, log_every=3, save_every=5))
    assert reads == [[1], [1, 2, 3], [4, 5], [4, 5, 6], [7]]
    lines = [eval_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6, 7] and all(line["loss"] > 0 for line in lines)


def test_mds_batches_are_dealt_into_microbatches_across_epochs_and_an_empty_dataset_is_an_error():
    from microdit.errors import UserError
    from microdit.train.data import RenamedLatents

    epoch = [{"image_latents": torch.arange(4.0) + 4 * i, "drop_caption_mask": torch.ones(4)} for i in range(2)]
    batches = iter(RenamedLatents(epoch, accumulation=2))
    seen = [next(batches) for _ in range(5)]
    # every other sample, as streaming deals a batch to two ranks
    assert [b["latents"].tolist() for b in seen] == [[0, 2], [1, 3], [4, 6], [5, 7], [0, 2]]
    assert all(b.keys() == {"latents", "drop_caption_mask"} for b in seen)
    with pytest.raises(UserError, match="fewer samples than one global batch"):
        next(iter(RenamedLatents([], accumulation=2)))


def test_mds_latents_of_another_size_than_the_model_takes_name_the_setting():
    """Latents from a VAE that is not 8x, with the workflow's default vae.downsample: one line saying what to set, at
    the first batch, instead of a shape error inside the first step."""
    from microdit.errors import UserError
    from microdit.train.data import RenamedLatents

    epoch = [{"image_latents": torch.zeros(4, 4, 64, 64), "drop_caption_mask": torch.ones(4)}]
    assert next(iter(RenamedLatents(epoch, 2, (4, 64, 64), 256)))["latents"].shape == (2, 4, 64, 64)
    with pytest.raises(UserError, match=r"takes \(4, 32, 32\) per image, but the latents .* are \(4, 64, 64\) at 256 "
                                        r"px.*model.latent_res to 64 \(in the workflow config: vae.downsample: 4\)"):
        next(iter(RenamedLatents(epoch, 2, (4, 32, 32), 256)))
    with pytest.raises(UserError, match=r"are \(4, 64, 64\) at 256 px$"):  # other channels: no downsampling hint
        next(iter(RenamedLatents(epoch, 2, (16, 64, 64), 256)))
    with pytest.raises(UserError, match=r"are \(4, 64, 64\)$"):  # no resolution among the data options
        next(iter(RenamedLatents(epoch, 2, (4, 32, 32))))


def test_train_stats_feed_the_report_ledger(tmp_path):
    import json

    from microdit.report.ledger import ledger_row

    run(tiny_config(tmp_path, steps=2))
    stats = json.loads((tmp_path / "train_stats.json").read_text())
    assert 0 < stats["first_step_s"] < stats["wall_time_s"]  # the (re)start's warm-up, compilation included
    row = ledger_row("stage1", stats, price_per_gpu_hour=3.75)
    assert (row.steps, row.gpus, row.dollars) == (2, 0, 0.0)  # CPU: no GPU-hours are billed
    assert row.images_seen == 2 * 4 and row.wall_hours > 0


def test_exports_record_the_encoders_their_latents_came_from(tmp_path, tiny_vae_dir, capsys):
    from microdit.cli import main

    run(tiny_config(tmp_path, steps=1, data={"vae": str(tiny_vae_dir), "text_encoder": "minilm"}))
    assert main(["checkpoint", "info", str(tmp_path / "final.safetensors"), "--json"]) == 0
    info = eval_json(capsys.readouterr().out)
    assert (info["vae"], info["text_encoder"], info["latent_res"], info["resolution"]) == (
        str(tiny_vae_dir), "minilm", 8, 32)  # the tiny VAE downsamples by 4, not the f8 default
