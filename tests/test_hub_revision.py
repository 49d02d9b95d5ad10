"""Hub models load at the revision their name pins: two revisions of one repository in an offline hub cache, each
with its own files, and the one named is the one loaded."""
import json
from pathlib import Path

import pytest

from microdit.errors import UserError
from microdit.hub import pinned_name, split_revision
from microdit.models.encoders import VAE, create_text_encoder

OLD, NEW = "1" * 40, "2" * 40


def snapshot(cache, repo: str, revision: str):
    folder = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(tmp_path))  # its copy, taken at import
    return tmp_path


def test_a_vae_loads_at_its_revision(hub_cache):
    from diffusers import AutoencoderKL

    for revision, scale in ((OLD, 0.5), (NEW, 0.25)):
        vae = AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                            up_block_types=("UpDecoderBlock2D",), latent_channels=4, scaling_factor=scale)
        vae.save_pretrained(snapshot(hub_cache, "org/vae", revision) / "vae")
    assert VAE(pinned_name("org/vae", OLD), "vae").scaling_factor == 0.5
    assert VAE(pinned_name("org/vae", NEW), "vae").scaling_factor == 0.25
    with pytest.raises(UserError, match="org/vae@3333"):
        VAE(pinned_name("org/vae", "3" * 40), "vae")


def test_an_open_clip_text_encoder_loads_at_its_revision(hub_cache):
    import open_clip
    from safetensors.torch import save_file

    saved = {}
    for revision, width in ((OLD, 32), (NEW, 48)):
        config = {"model_cfg": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                                "patch_size": 16, "head_width": 16},
                                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2,
                                             "layers": 1}}}
        folder = snapshot(hub_cache, "org/clip", revision)
        (folder / "open_clip_config.json").write_text(json.dumps(config))
        model = open_clip.create_model(f"local-dir:{folder}")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
        saved[revision] = model.token_embedding.weight.detach().clone()
    for revision, width in ((OLD, 32), (NEW, 48)):
        encoder = create_text_encoder(f"openclip:{pinned_name('hf-hub:org/clip', revision)}")
        assert encoder.width == width and encoder.encode(["a red cube"]).shape == (1, 1, 77, width)
        assert encoder.clip.token_embedding.weight.equal(saved[revision])  # that revision's weights, not random ones
    with pytest.raises((OSError, UserError)):  # one line naming the encoder, through the command's error path
        create_text_encoder(f"openclip:hf-hub:org/clip@{'3' * 40}")


def test_names_without_a_revision_are_left_alone(tmp_path):
    folder = tmp_path / "a@b"
    folder.mkdir()
    assert split_revision(str(folder)) == (str(folder), None)
    assert split_revision("org/repo") == ("org/repo", None)
    assert split_revision(pinned_name("org/repo", OLD)) == ("org/repo", OLD)
    assert pinned_name("org/repo") == "org/repo"


def test_a_transformers_text_encoder_loads_at_its_revision(hub_cache):
    from microdit.models.encoders import minilm_path

    folder = snapshot(hub_cache, "org/minilm", OLD)
    for file in Path(minilm_path()).iterdir():
        if file.is_file():
            (folder / file.name).symlink_to(file)
    assert create_text_encoder(f"hf:org/minilm@{OLD}").encode(["a red cube"]).shape == (1, 1, 77, 384)
    with pytest.raises((OSError, UserError)):  # no such revision in the cache, and no network
        create_text_encoder(f"hf:org/minilm@{NEW}")
