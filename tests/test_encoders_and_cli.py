"""Encoders, the LatentDiffusion wrapper, and the `sample` / `bench` commands, all offline."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from microdit.checkpoint import save_dit
from microdit.cli import main
from microdit.models.encoders import VAE, create_text_encoder
from microdit.models.latent_diffusion import create_latent_diffusion


def test_openclip_token_states_agree_with_open_clip_pooled_text_features():
    """Our all-token path (after ln_final), pooled at EOT and projected, is open_clip's own encode_text."""
    encoder = create_text_encoder("openclip:ViT-B-32")
    prompts = ["a photo of a corgi", "two red circles left of a blue square"]
    tokens = encoder.tokenize(prompts)["input_ids"]
    states = encoder.encode(prompts)
    assert states.shape == (2, 1, 77, 512)
    pooled = states[:, 0][torch.arange(2), tokens.argmax(dim=-1)] @ encoder.clip.text_projection
    torch.testing.assert_close(pooled, encoder.clip.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_minilm_encoder_gives_per_token_states():
    encoder = create_text_encoder("minilm")
    states = encoder.encode(["a red circle", "a blue square"])
    assert states.shape == (2, 1, 77, 384) and states.dtype == torch.float32
    assert not torch.allclose(states[0], states[1])


def test_unknown_text_encoder_name_is_a_clear_error():
    with pytest.raises(ValueError, match="expected 'openclip:<name>'"):
        create_text_encoder("t5-someday")


def test_a_vae_that_cannot_be_loaded_is_one_line_naming_it(tmp_path):
    from microdit.errors import UserError

    with pytest.raises(UserError, match=f"VAE {tmp_path / 'vea'}: cannot load it: not a diffusers AutoencoderKL"):
        VAE(str(tmp_path / "vea"))  # a typo of a directory (offline in tests: not looked up on the hub either)


@pytest.mark.parametrize("name", ["openclip:hf-hub:apple/DFN5B-CLIP-ViT-H-14-378", "hf:google/t5-small"])
def test_a_hub_text_encoder_missing_offline_is_one_line_naming_it(name):
    from microdit.errors import UserError

    with pytest.raises(UserError, match=f"text encoder {name}: cannot load it: .* cached or reachable") as err:
        create_text_encoder(name)  # offline in tests: neither is cached
    assert "\n" not in str(err.value)


def test_a_directory_given_as_checkpoint_says_so_and_what_it_holds(tiny_pipeline, tmp_path, capsys):
    save_dit(tiny_pipeline.dit, tmp_path / "final.safetensors", "MicroDiT_Nano_2")
    code = main(["sample", "--checkpoint", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{tmp_path}: is a directory; expected a checkpoint file" in err and "final.safetensors" in err


def test_vae_scaling_and_shift_round_trip(tiny_vae_dir):
    vae = VAE(str(tiny_vae_dir))
    assert (vae.latent_channels, vae.downsample) == (4, 4)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = vae.encode(images, torch.Generator().manual_seed(0))
    again = vae.encode(images, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8) and torch.equal(latents, again)
    raw = vae.vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(latents, raw * vae.scaling_factor)
    decoded = vae.decode(latents)
    assert decoded.shape == (2, 3, 32, 32) and decoded.min() >= 0 and decoded.max() <= 1


def test_a_vae_shift_factor_is_applied_unless_asked_not_to(tiny_vae_dir, tmp_path):
    shifted = shutil.copytree(tiny_vae_dir, tmp_path / "vae")
    config = json.loads((shifted / "config.json").read_text())
    (shifted / "config.json").write_text(json.dumps({**config, "shift_factor": 0.5}))
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    ours, authors = VAE(str(shifted)), VAE(str(shifted), shift=False)  # the authors' latents were scaled only
    raw = ours.vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours.encode(images, torch.Generator().manual_seed(0)), (raw - 0.5) * ours.scaling_factor)
    torch.testing.assert_close(authors.encode(images, torch.Generator().manual_seed(0)), raw * ours.scaling_factor)


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_vae_dir):
    torch.manual_seed(0)
    model = create_latent_diffusion(vae_name=str(tiny_vae_dir), text_encoder_name="minilm",
                                    dit_arch="MicroDiT_Nano_2", latent_res=8, pos_interp_scale=0.5)
    for p in model.dit.final_layer.parameters():  # a non-zero output layer, so sampling depends on the prompt
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_generate_is_seeded_including_seed_zero(tiny_pipeline):
    images = tiny_pipeline.generate(prompt=["a red circle", "a blue square"], num_inference_steps=4, seed=0)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    again = tiny_pipeline.generate(prompt=["a red circle", "a blue square"], num_inference_steps=4, seed=0)
    other = tiny_pipeline.generate(prompt=["a red circle", "a blue square"], num_inference_steps=4, seed=1)
    assert torch.equal(images, again) and not torch.equal(images, other)


def test_sample_command_writes_a_grid_from_our_checkpoint(tiny_pipeline, tiny_vae_dir, tmp_path, capsys):
    path = tmp_path / "dit.safetensors"
    save_dit(tiny_pipeline.dit, path, "MicroDiT_Nano_2", extra={"vae": str(tiny_vae_dir), "text_encoder": "minilm"})
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", "a red circle", "--prompt", "a blue square",
                 "--images-per-prompt", "2", "--steps", "3", "--out", str(out), "--device", "cpu"]) == 0
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)
        fourth = np.asarray(grid.convert("RGB"))[36:68, 36:68]  # row 2, column 2: the blue square's second image
    # image i is seeded by seed + i, as --seed says: the fourth image alone at seed 2024 + 3 is the same picture
    single = tmp_path / "single.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", "a blue square", "--seed", "2027", "--steps", "3",
                 "--out", str(single), "--device", "cpu"]) == 0
    with Image.open(single) as grid:
        alone = np.asarray(grid.convert("RGB")).astype(int)  # a grid of one image is the image
    assert np.abs(alone - fourth).max() <= 1  # another batch: float rounding may move a pixel by one level
    assert main(["sample", "--checkpoint", str(path), "--prompt", "x", "--resolution", "64", "--out",
                 str(tmp_path / "g.png"), "--device", "cpu"]) == 2
    assert "generates 32 px" in capsys.readouterr().err and not (tmp_path / "g.png").exists()


def test_sample_with_wrong_text_encoder_width_is_a_clear_error(tiny_pipeline, tiny_vae_dir, tmp_path, capsys):
    path = tmp_path / "dit.safetensors"
    save_dit(tiny_pipeline.dit, path, "MicroDiT_Nano_2", extra={"vae": str(tiny_vae_dir)})
    code = main(["sample", "--checkpoint", str(path), "--prompt", "x", "--text-encoder", "openclip:ViT-B-32",
                 "--out", str(tmp_path / "g.png"), "--device", "cpu"])
    assert code == 2 and "width 512" in capsys.readouterr().err and not (tmp_path / "g.png").exists()


def test_a_vae_of_other_latent_channels_is_refused_before_sampling(tiny_vae_dir, tmp_path, capsys):
    from microdit.models.dit import create_dit
    from microdit.models.latent_diffusion import PAPER_VAE, paper_vae

    assert (paper_vae(4), paper_vae(16)) == (PAPER_VAE, "ostris/vae-kl-f8-d16")  # the release's pairs
    path = tmp_path / "dit16.safetensors"
    dit = create_dit("MicroDiT_Nano_2", input_size=8, in_channels=16, caption_channels=384, pos_interp_scale=0.5)
    save_dit(dit, path, "MicroDiT_Nano_2", extra={"vae": str(tiny_vae_dir), "text_encoder": "minilm"})
    code = main(["sample", "--checkpoint", str(path), "--prompt", "x", "--out", str(tmp_path / "g.png"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "4 latent channels but the denoiser takes 16" in err and not (tmp_path / "g.png").exists()


def _json_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def _bench(mode: str, stages: tuple, *settings: str) -> list[str]:
    """`microdit bench MODE` at paper stage configs on the CPU: the Nano architecture, eager, fp32."""
    paths = [f"--stage={Path(__file__).resolve().parents[1]}/config/stages/paper/stage{n}.yaml" for n in stages]
    return ["bench", mode, *paths, *(arg for setting in ("model.arch=MicroDiT_Nano_2", "compile=none",
                                                         "precision=fp32", *settings) for arg in ("--set", setting))]


@pytest.mark.slow
def test_bench_train_prints_one_json_line_per_stage(capsys):
    assert main([*_bench("train", (1, 2), "micro_batch=1"), "--steps", "1", "--device", "cpu", "--profile"]) == 0
    rows = _json_lines(capsys)
    profile = rows[0]["profile"]
    kinds = {kind["kind"]: kind for kind in profile["kinds"]}
    assert sum(kind["share"] for kind in kinds.values()) == pytest.approx(1.0, abs=1e-3)  # every op in one kind
    assert sum(kind["ms_per_step"] for kind in kinds.values()) == pytest.approx(profile["device_ms_per_step"],
                                                                                rel=1e-2)
    assert 0 < len(profile["top"]) <= 30 and "aten::mm" in {op["name"] for op in profile["top"]}
    assert {"matmul", "attention"} <= set(kinds)  # the linear layers and SDPA, found by name
    assert [row["stage"].rsplit("/", 1)[1] for row in rows] == ["stage1.yaml", "stage2.yaml"]
    for row in rows:
        assert {"img_per_s", "step_s", "first_step_s", "peak_mem_gib", "params", "mfu", "train_gflops_per_img",
                "compile", "checkpoint_blocks", "low_precision_norm", "moe_dispatch"} <= set(row)
        assert row["img_per_s"] > 0 and row["params"] > 1e6 and row["mfu"] is None
        assert row["low_precision_norm"] is True and row["compile"] == "none"  # the config's, then --set's
    # the masked stage counts fewer FLOPs: the backbone sees a quarter of the tokens
    assert rows[0]["train_gflops_per_img"] < rows[1]["train_gflops_per_img"]


@pytest.mark.slow
def test_bench_memory_prediction_falls_with_activation_checkpointing(capsys):
    for blocks in ("0", "8"):
        assert main(_bench("memory", (2,), "micro_batch=4", f"checkpoint_blocks={blocks}")) == 0
    stored, recomputed = _json_lines(capsys)
    assert stored["resident_gib"] == recomputed["resident_gib"] > stored["params_gib"] > 0
    assert recomputed["peak_gib"] < stored["peak_gib"]
    # --fit-gib: the fewest recomputed blocks whose peak fits, found between the two
    budget = (stored["peak_gib"] + recomputed["peak_gib"]) / 2
    assert main([*_bench("memory", (2,), "micro_batch=4"), "--fit-gib", str(budget)]) == 0
    (fitted,) = _json_lines(capsys)
    blocks = fitted["checkpoint_blocks"]
    assert fitted["fits"] and 0 < blocks <= 8 and fitted["peak_gib"] <= budget + 1e-4  # printed to 4 decimals
    assert main(_bench("memory", (2,), "micro_batch=4", f"checkpoint_blocks={blocks - 1}")) == 0
    assert _json_lines(capsys)[0]["peak_gib"] > budget - 1e-4


def test_bench_sample_times_the_stages_sampler(capsys):
    assert main([*_bench("sample", (1,), "model.latent_res=8", "model.overrides={depth: 3, patch_mixer_depth: 2}",
                         "samples.steps=2"), "--batch", "2", "--device", "cpu"]) == 0
    (row,) = _json_lines(capsys)
    assert row["resolution"] == 64 and row["img_per_s"] > 0 and row["state_dtype"] == "fp32"
    assert (row["steps"], row["guidance"]) == (2, 5.0)  # the stage's samples settings
