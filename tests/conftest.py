import os
from pathlib import Path

import pytest

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                     "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_key, _value)
# `make test` runs two pytest workers on two cores: one OpenMP thread each (here and in the processes tests start),
# or the workers' thread pools spin against each other
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MICRODIT_SHARED", REPO.parent / "shared"))


def pytest_collection_modifyitems(items):
    """Slow tests first: the workers then end together on short tests, not one waiting for a long one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = SHARED / "reference"
    if not path.is_dir():
        pytest.fail(f"reference artifacts not found at {path} (set MICRODIT_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    from microdit.tiny_vae import save_tiny_vae

    return Path(save_tiny_vae(tmp_path_factory.mktemp("tiny_vae")))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_vae_dir) -> Path:
    """A random MicroDiT_Nano_2 export for 32 px images through the tiny VAE and MiniLM, as `microdit train` writes
    one."""
    import torch

    from microdit.checkpoint import save_dit
    from microdit.models.latent_diffusion import create_latent_diffusion

    torch.manual_seed(0)
    model = create_latent_diffusion(vae_name=str(tiny_vae_dir), text_encoder_name="minilm",
                                    dit_arch="MicroDiT_Nano_2", latent_res=8, pos_interp_scale=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_dit(model.dit, path, "MicroDiT_Nano_2", extra={"vae": str(tiny_vae_dir), "text_encoder": "minilm"})
    return path
