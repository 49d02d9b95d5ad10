"""Checkpoint reading: the authors' torch.save'd state_dicts, our safetensors, and every kind of bad file."""
import dataclasses
import datetime
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from microdit.checkpoint import CheckpointError, load_dit, read_checkpoint, save_dit
from microdit.cli import main
from microdit.models.dit import create_dit
from microdit.models.layers import sincos_pos_embed_2d


def manifest_state_dict(manifest: dict, with_buffers: bool) -> dict:
    """Tensors of the released shapes that cost one element of storage each (stride-0 views)."""
    shapes = {**(manifest["buffers"] if with_buffers else {}), **manifest["params"]}
    return {k: torch.full((), 0.01).expand(shape) for k, shape in shapes.items()}


@pytest.mark.parametrize("with_buffers", [True, False])
def test_authors_release_format_loads_strictly_into_xl(reference_dir, tmp_path, capsys, with_buffers):
    manifest = json.loads((reference_dir / "microdit_xl2_c4_r64.json").read_text())
    state = manifest_state_dict(manifest, with_buffers)
    if with_buffers:  # a real pos_embed so the resolution is read from the file
        state["pos_embed"] = sincos_pos_embed_2d(1024, 32, 2.0).unsqueeze(0)
    path = tmp_path / "dit_4_channel_37M_real_and_synthetic_data.pt"
    torch.save(state, path)
    assert main(["checkpoint", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "MicroDiT_XL_2"
    assert info["parameters"] == manifest["param_count_total"] == 1_165_442_320
    assert (info["latent_channels"], info["resolution"], info["pos_interp_scale"]) == (4, 512, 2.0)
    assert info["resolution_from"] == ("pos_embed" if with_buffers else "assumed (no pos_embed in the file)")
    assert info["format"] == "torch.save" and info["weights"].startswith("unknown")


def test_composer_checkpoint_keys_are_unprefixed(tmp_path):
    dit = create_dit("MicroDiT_Nano_2", input_size=8)
    # a compiled denoiser inside a DDP-wrapped LatentDiffusion, with its VAE's weights beside it
    state = {f"module.dit._orig_mod.{k}": v for k, v in dit.state_dict().items()} | {
        "module.vae.encoder.conv_in.weight": torch.zeros(1)}
    # what else a Composer checkpoint pickles: its clock's wall times, every rank's RNG states, numpy scalars
    clock = {"batch": 250_000, "total_wct": datetime.timedelta(hours=49.5), "batch_wct": datetime.timedelta(0)}
    rng = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]
    torch.save({"state": {"model": state, "timestamp": clock, "rank_zero_seed": np.int64(18)}, "rng": rng},
               tmp_path / "composer.pt")
    _, loaded, _ = load_dit(tmp_path / "composer.pt")
    for key, value in dit.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_safetensors_round_trip_keeps_config_and_kind(tmp_path):
    torch.manual_seed(1)
    dit = create_dit("MicroDiT_Nano_2", input_size=16, in_channels=16, caption_channels=32, pos_interp_scale=1.0)
    save_dit(dit, tmp_path / "ema.safetensors", "MicroDiT_Nano_2", kind="ema", extra={"text_encoder": "minilm"})
    arch, loaded, metadata = load_dit(tmp_path / "ema.safetensors")
    assert arch == "MicroDiT_Nano_2" and loaded.config == dit.config
    assert metadata["kind"] == "ema" and metadata["text_encoder"] == "minilm"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in dit.state_dict().items())
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_training_checkpoint_is_read_with_its_recorded_model_and_encoders(tmp_path, tiny_vae_dir, capsys):
    from microdit.train.config import stage_config_from_dict, to_dict

    settings = to_dict(stage_config_from_dict({
        "name": "s", "steps": 2, "global_batch": 2, "micro_batch": 2,
        "model": {"arch": "MicroDiT_Nano_2", "latent_res": 16, "caption_channels": 384, "pos_interp_scale": 2.0,
                  "overrides": {"depth": 3}},
        "data": {"vae": str(tiny_vae_dir), "text_encoder": "minilm"}}))
    dit = create_dit("MicroDiT_Nano_2", input_size=16, caption_channels=384, pos_interp_scale=2.0, depth=3)
    ema = {k: v.clone() for k, v in dit.state_dict().items() if k != "pos_embed"}
    torch.save({"step": 7, "config": settings, "model": dit.state_dict(), "ema": ema}, tmp_path / "step_7.pt")
    arch, loaded, metadata = load_dit(tmp_path / "step_7.pt")
    assert arch == "MicroDiT_Nano_2" and loaded.config == dit.config
    assert (metadata["vae"], metadata["text_encoder"], metadata["vae_downsample"]) == (str(tiny_vae_dir), "minilm", 4)
    assert main(["checkpoint", "info", str(tmp_path / "step_7.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["resolution"] == 64 and info["format"] == "torch.save (microdit training checkpoint, step 7)"
    assert info["weights"] == "raw (the file also holds its EMA)"
    torch.save({"step": 7, "config": settings, "model": dit.state_dict(), "ema": None}, tmp_path / "step_7.pt")
    assert load_dit(tmp_path / "step_7.pt")[2]["kind"] == "raw"  # a stage without EMA saves "ema": None


def test_mismatched_checkpoint_lists_first_mismatches(tmp_path):
    state = create_dit("MicroDiT_Nano_2", input_size=8).state_dict()
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    del state["final_layer.linear.bias"]
    state["blocks.0.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_dit(tmp_path / "bad.pt")
    message = str(err.value)
    assert "1 missing, 1 unexpected, 1 wrong shape" in message
    assert "final_layer.linear.bias" in message and "blocks.0.extra" in message and "(3, 3)" in message


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_that_would_run_code_is_refused_and_never_run(tmp_path, capsys, writer):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    payload = {"x_embedder.proj.weight": _RunsCode(str(marker))}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert main(["checkpoint", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and str(path) in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, not a checkpoint\n", "not a checkpoint"),
    ("truncated-pt", "not a checkpoint, or truncated"),
    ("truncated-safetensors", "truncated safetensors"),
    ("list", "not a state_dict"),
])
def test_bad_files_give_one_line_errors(tmp_path, capsys, content, reason):
    path = tmp_path / ("x.safetensors" if content == "truncated-safetensors" else "x.pt")
    if content == "truncated-pt":
        torch.save(create_dit("MicroDiT_Nano_2", input_size=8).state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif content == "truncated-safetensors":
        save_dit(create_dit("MicroDiT_Nano_2", input_size=8), path, "MicroDiT_Nano_2")
        path.write_bytes(path.read_bytes()[:5000])
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)
    assert main(["checkpoint", "info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and str(path) in err and len(err.splitlines()) == 1


def test_missing_file(capsys, tmp_path):
    assert main(["checkpoint", "info", str(tmp_path / "nope.pt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_read_checkpoint_reports_unknown_architecture(tmp_path):
    state = create_dit("MicroDiT_Nano_2", input_size=8, depth=3).state_dict()
    torch.save(state, tmp_path / "odd.pt")
    read_checkpoint(tmp_path / "odd.pt")  # readable...
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_dit(tmp_path / "odd.pt")  # ...but not one of ours


def test_exports_of_the_same_weights_are_the_same_bytes(tmp_path):
    # issue 29: safetensors writes metadata in a different order on every call, so identical runs gave different
    # checkpoint_sha256 values in fid.json and the report
    from microdit.checkpoint import weights_digest
    from microdit.files import sha256_file

    dit = create_dit("MicroDiT_Nano_2", input_size=8)
    extra = {f"key{i}": i for i in range(8)} | {"text_encoder": "caf\u00e9 \"quoted\"\n"}
    digests, contents = set(), set()
    for name in ("a", "b", "c"):
        save_dit(dit, tmp_path / f"{name}.safetensors", "MicroDiT_Nano_2", extra=extra)
        digests.add(weights_digest(tmp_path / f"{name}.safetensors"))
        contents.add(sha256_file(tmp_path / f"{name}.safetensors"))
    assert len(digests) == 1 and len(contents) == 1
    arch, loaded, metadata = load_dit(tmp_path / "a.safetensors")
    assert metadata["text_encoder"] == "caf\u00e9 \"quoted\"\n" and loaded.config == dit.config
    with torch.no_grad():
        dit.final_layer.linear.bias.add_(1.0)
    save_dit(dit, tmp_path / "d.safetensors", "MicroDiT_Nano_2", extra=extra)
    assert weights_digest(tmp_path / "d.safetensors") not in digests


@pytest.mark.parametrize("case,reason", [
    ("config-not-json", "metadata 'config' is not a MicroDiT config"),
    ("config-of-another-version", "metadata 'config' is not a MicroDiT config"),
    ("mixer-without-norm", "missing 'patch_mixer.0.norm1.weight'"),
    ("grid-below-a-patch", "not a positive multiple of the patch size 2"),
])
def test_unusable_metadata_keys_or_resolution_give_one_line_errors(tmp_path, capsys, case, reason):
    from safetensors.torch import save_file

    state = create_dit("MicroDiT_Nano_2", input_size=8).state_dict()
    path, argv = tmp_path / "x.pt", []
    if case.startswith("config"):
        path = tmp_path / "x.safetensors"
        config = "not json" if case == "config-not-json" else '{"foo": 1}'
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"config": config})
    else:
        state.pop("pos_embed", None)
        if case == "mixer-without-norm":
            state.pop("patch_mixer.0.norm1.weight")
        else:
            argv = ["--resolution", "12"]  # a 1-token latent grid
        torch.save(state, path)
    assert main(["checkpoint", "info", str(path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and str(path) in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("case,reason", [
    ("all-zero-pos-embed", "pos_embed is not a sin-cos position table"),
    ("1-d-pos-embed", "pos_embed has shape (64,), expected (1, grid * grid, 128)"),
    ("huge-width", "does not match the model"),
    ("negative-width", "config dim is -128, expected an integer >= 1"),
    ("many-blocks", "config depth is 100000, but the file has 6 blocks"),
    ("huge-grid", "config input_size 65536 and dim 128 ask for a position table"),
])
def test_sizes_are_checked_before_the_model_takes_memory(tmp_path, capsys, case, reason):
    # issue 29: a ZeroDivisionError, an IndexError, and a model built at the size a metadata config asks for (4 TB)
    from safetensors.torch import save_file

    dit = create_dit("MicroDiT_Nano_2", input_size=8)
    state = {k: v.contiguous() for k, v in dit.state_dict().items()}
    if case.endswith("pos-embed") and not case.startswith("huge"):
        state["pos_embed"] = torch.zeros(1, 16, 128) if case.startswith("all-zero") else torch.zeros(64)
        path = tmp_path / "authors.pt"
        torch.save(state, path)
    else:
        changes = {"huge-width": {"dim": 2 ** 20}, "negative-width": {"dim": -128}, "many-blocks": {"depth": 100_000},
                   "huge-grid": {"input_size": 2 ** 16}}[case]
        if case == "huge-grid":  # no pos_embed to compare: it would be recomputed at the config's size
            state.pop("pos_embed")
        path = tmp_path / "export.safetensors"
        config = json.dumps({**dataclasses.asdict(dit.config), **changes})
        save_file(state, str(path), metadata={"format": "microdit", "config": config})
    assert main(["checkpoint", "info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and str(path) in err and len(err.splitlines()) == 1


def test_non_finite_weights_are_refused_by_name(tmp_path, capsys):
    # issue 29: NaN weights loaded (`checkpoint info` said pos_interp_scale: nan) and `sample` wrote a black PNG
    dit = create_dit("MicroDiT_Nano_2", input_size=8)
    with torch.no_grad():
        dit.blocks[2].attn.qkv.weight[0, 0] = float("nan")
        dit.final_layer.linear.bias[1] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_dit(dit, path, "MicroDiT_Nano_2")
    assert main(["checkpoint", "info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("2 tensors hold NaN or infinite values: blocks.2.attn.qkv.weight, final_layer.linear.bias")
    assert str(path) in err and len(err.splitlines()) == 1
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", "x", "--out", str(out), "--device", "cpu"]) == 2
    assert "NaN or infinite" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("guidance", ["nan", "-1", "inf"])
def test_guidance_must_be_a_finite_number_of_at_least_zero(tmp_path, capsys, guidance):
    # issue 29: NaN or a negative guidance silently meant no guidance
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--checkpoint", str(tmp_path / "x.safetensors"), "--prompt", "x", "--out",
              str(tmp_path / "g.png"), f"--guidance={guidance}"])
    assert exit_.value.code == 2 and f"expected a finite number >= 0, got {guidance!r}" in capsys.readouterr().err
