"""Sampling from a checkpoint: rebuild the pipeline around the stored denoiser, generate, write an image grid."""
import math
import os

import torch

from microdit.checkpoint import load_dit
from microdit.diffusion.edm import EDMConfig
from microdit.errors import UserError
from microdit.files import atomic_write
from microdit.models.encoders import VAE, create_text_encoder
from microdit.models.latent_diffusion import PAPER_TEXT_ENCODER, LatentDiffusion, paper_vae
from microdit.models.speed import SpeedOptions, apply_speed_options


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> this process's GPU (LOCAL_RANK / SLURM_LOCALID) when there is one, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    return torch.device(f"cuda:{local % torch.cuda.device_count()}")


def pipeline_from_checkpoint(checkpoint: str, vae: str | None = None, text_encoder: str | None = None,
                             latent_res: int | None = None, device: str = "auto", precision: str = "auto",
                             compile_mode: str = "none") -> LatentDiffusion:
    """Encoders come from the arguments, else from the checkpoint's metadata (our exports record the encoders of
    their latents, `data.vae` / `data.text_encoder`), else the paper's (the SDXL VAE, or ostris/vae-kl-f8-d16 for
    16 latent channels, and DFN5B CLIP-H: these need the model hub or its cache). precision "auto" samples under
    bf16 autocast on a GPU and in fp32 on the CPU (where bf16 is slower)."""
    device = pick_device(device)
    _, dit, metadata = load_dit(checkpoint, latent_res=latent_res, device=device)
    vae_name = vae or metadata.get("vae") or paper_vae(dit.config.in_channels)
    text_name = text_encoder or metadata.get("text_encoder") or PAPER_TEXT_ENCODER
    # our files' latents were shifted when their VAE has a shift factor; the authors' never were
    vae_module = VAE(vae_name, shift=metadata.get("format") == "microdit").to(device)
    text_module = create_text_encoder(text_name).to(device)
    if text_module.width != dit.config.caption_channels:
        raise UserError(f"text encoder {text_name!r} gives width {text_module.width} but {checkpoint} expects "
                        f"{dit.config.caption_channels}-wide caption embeddings")
    dit.eval()
    apply_speed_options(dit, SpeedOptions(compile=compile_mode))
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return LatentDiffusion(dit, vae_module, text_module, EDMConfig(), precision=precision)


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> one PNG, written atomically; returns the grid, (3,H',W')."""
    from torchvision.utils import make_grid, save_image

    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    grid = make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="PNG"))
    return grid
