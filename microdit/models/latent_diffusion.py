"""LatentDiffusion: the MicroDiT denoiser between a frozen VAE and a frozen text encoder, sampled with EDM (the
trainer, microdit/train, trains the denoiser alone on precomputed latents). Use from Python: docs/commands.md.
"""

import torch
import torch.nn as nn

from microdit.diffusion.edm import EDMConfig, heun_sampler
from microdit.errors import UserError
from microdit.models.dit import MicroDiT, create_dit
from microdit.models.encoders import VAE, create_text_encoder

PAPER_VAE = "stabilityai/stable-diffusion-xl-base-1.0"
PAPER_VAE_16_CHANNELS = "ostris/vae-kl-f8-d16"  # the VAE of the authors' 16-channel release
PAPER_TEXT_ENCODER = "openclip:hf-hub:apple/DFN5B-CLIP-ViT-H-14-378"
PRECISIONS = ("fp32", "bf16")


class LatentDiffusion(nn.Module):
    def __init__(self, dit: MicroDiT, vae: VAE, text_encoder: nn.Module, edm: EDMConfig,
                 precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}; expected one of {PRECISIONS}")
        if vae.latent_channels != dit.config.in_channels:
            # caught here, not by the VAE decode after a whole sampling run
            raise UserError(f"the VAE has {vae.latent_channels} latent channels but the denoiser takes "
                            f"{dit.config.in_channels}")
        self.dit, self.vae, self.text_encoder = dit, vae, text_encoder
        self.edm = edm
        self.precision = precision  # the denoiser's, when sampling: fp32, or bf16 autocast

    @property
    def latent_res(self) -> int:
        return self.dit.config.input_size

    @property
    def resolution(self) -> int:
        """The side of the images it generates, in pixels."""
        return self.latent_res * self.vae.downsample

    @property
    def device(self) -> torch.device:
        return self.dit.pos_embed.device

    @torch.no_grad()
    def generate(self, prompt: list[str], guidance_scale: float = 5.0, num_inference_steps: int = 30,
                 seed: int | list[int] | None = None) -> torch.Tensor:
        """Images (B,3,H,W) in [0,1]. seed=None draws fresh noise; any integer, 0 included, makes the result
        reproducible (the original ignored seed=0); a list gives each image a seed of its own, so that an image's
        noise depends neither on its batch nor on the device."""
        captions = self.text_encoder.encode(list(prompt)).to(self.device)  # (B, L, caption_channels)
        noise = self.initial_noise(captions.shape[0], seed)  # (B, C, H, W)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            latents = sample_latents(self.dit, noise, captions.float(), self.edm, num_inference_steps, guidance_scale)
        return self.vae.decode(latents)

    def initial_noise(self, batch: int, seed: int | list[int] | None) -> torch.Tensor:
        shape = (self.dit.config.in_channels, self.latent_res, self.latent_res)
        if isinstance(seed, (list, tuple)):
            if len(seed) != batch:
                raise ValueError(f"{len(seed)} seeds for a batch of {batch}")
            # drawn on the CPU: the same noise on every device
            noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seed]
            return torch.stack(noise).to(self.device)
        generator = torch.Generator(device=self.device)
        if seed is not None:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
        return torch.randn((batch, *shape), generator=generator, device=self.device)


def sample_latents(dit: MicroDiT, noise: torch.Tensor, captions: torch.Tensor, edm: EDMConfig, num_steps: int = 30,
                   guidance_scale: float = 1.0, state_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Heun sampler with the denoiser's caption side computed once per batch, not at each of its 2N-1 calls."""
    context = dit.caption_context(captions, guided=guidance_scale > 1.0)  # the sampler guides only above 1
    return heun_sampler(dit, noise, context, edm, num_steps, guidance_scale, state_dtype)


def create_latent_diffusion(vae_name: str = PAPER_VAE, text_encoder_name: str = PAPER_TEXT_ENCODER,
                            dit_arch: str = "MicroDiT_XL_2", latent_res: int = 32, in_channels: int | None = None,
                            pos_interp_scale: float = 1.0, p_mean: float = -0.6, p_std: float = 1.2,
                            vae_subfolder: str | None = "auto",
                            caption_channels: int | None = None, **dit_overrides) -> LatentDiffusion:
    """Build the whole model (`vae_subfolder`: as VAE takes it). `in_channels` / `caption_channels` default to the
    encoders'."""
    vae = VAE(vae_name, vae_subfolder)
    text_encoder = create_text_encoder(text_encoder_name)
    in_channels = in_channels or vae.latent_channels
    caption_channels = caption_channels or text_encoder.width
    dit = create_dit(dit_arch, input_size=latent_res, in_channels=in_channels, pos_interp_scale=pos_interp_scale,
                     caption_channels=caption_channels, **dit_overrides)
    return LatentDiffusion(dit, vae, text_encoder, EDMConfig(p_mean=p_mean, p_std=p_std))


def paper_vae(in_channels: int) -> str:
    """The VAE the authors paired with a denoiser of this many latent channels."""
    return PAPER_VAE_16_CHANNELS if in_channels == 16 else PAPER_VAE


