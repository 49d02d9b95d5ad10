"""Fixtures for the data pipeline tests: a tiny VAE and isolated streaming state."""
import tempfile

import pytest


@pytest.fixture(scope="session")
def tiny_vae_dirs(tmp_path_factory) -> dict[int, str]:
    """Random tiny AutoencoderKLs (block_out_channels (32, 64): downsampling 2) with 4 and 16 latent channels."""
    import torch
    from diffusers import AutoencoderKL

    dirs = {}
    for channels in (4, 16):
        torch.manual_seed(channels)
        vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=channels, sample_size=32)
        path = tmp_path_factory.mktemp(f"vae{channels}")
        vae.save_pretrained(path)
        dirs[channels] = str(path)
    return dirs


@pytest.fixture
def isolated_streaming(tmp_path, monkeypatch):
    """streaming keeps file locks under tempfile.gettempdir(): give each test its own."""
    locks = tmp_path / "streaming_tmp"
    locks.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(locks))
    yield locks
