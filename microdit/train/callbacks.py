"""Per-step hooks. A callback is any callable taking a StepContext; it runs on every rank after each optimizer step,
so collective work (gathering sharded weights) is possible and the callback itself decides what rank 0 does."""
from pathlib import Path

import torch

from microdit.models.latent_diffusion import sample_latents
from microdit.sampling import save_image_grid
from microdit.train.config import SamplesConfig


class SampleGrid:
    """Every `samples.every` steps, rank 0 samples the (EMA if any) denoiser from fixed noise and fixed caption
    embeddings and writes <out>/samples/step_<N>.png: decoded images with `samples.vae`, else latent channels 0-2.
    The captions are `samples.prompts` encoded once with the text encoder the latents were made with (then freed),
    or a file of embeddings (`samples.captions`), or null captions. The grid also goes to TensorBoard (`samples`)."""

    def __init__(self, cfg: SamplesConfig, out_dir: str | Path, text_encoder: str = "", caption_len: int = 77):
        self.cfg, self.folder = cfg, Path(out_dir) / "samples"
        self.text_encoder, self.caption_len = text_encoder, caption_len
        self._captions = self._vae = None

    def __call__(self, ctx) -> None:
        if not self.cfg.every or ctx.step % self.cfg.every:
            return
        trainer = ctx.trainer
        dit = trainer.export_model(use_ema=trainer.ema is not None)  # collective: every rank gets here
        if dit is None:
            return
        device = trainer.info.device
        dit = dit.to(device)
        captions = self.captions(dit).to(device)
        generator = torch.Generator().manual_seed(self.cfg.seed)
        noise = torch.randn(captions.shape[0], dit.config.in_channels, dit.config.input_size, dit.config.input_size,
                            generator=generator).to(device)
        with trainer.autocast():
            latents = sample_latents(dit, noise, captions, trainer.edm, self.cfg.steps, self.cfg.guidance_scale)
        trainer.log.image("samples", self.save(latents, ctx.step), ctx.step)

    def captions(self, dit) -> torch.Tensor:
        """(N,1,L,W) caption embeddings from `samples.captions` (safetensors key 'caption_latents'), else null ones."""
        if self._captions is None:
            if self.cfg.prompts:
                from microdit.models.encoders import create_text_encoder

                encoder = create_text_encoder(self.text_encoder, self.caption_len).to(next(dit.parameters()).device)
                with torch.no_grad():
                    self._captions = encoder.encode(self.cfg.prompts[: self.cfg.num]).float().cpu()
                del encoder
            elif self.cfg.captions:
                from safetensors.torch import load_file

                self._captions = load_file(self.cfg.captions)["caption_latents"][: self.cfg.num].float()
            else:
                width = dit.config.caption_channels
                self._captions = torch.zeros(self.cfg.num, 1, 1, width)
        return self._captions

    def save(self, latents: torch.Tensor, step: int) -> torch.Tensor:
        """Write the grid of these samples' images; returns it, (3,H,W) in [0,1]."""
        if self.cfg.vae:
            if self._vae is None:
                from microdit.models.encoders import VAE

                self._vae = VAE(self.cfg.vae).to(latents.device)
            images = self._vae.decode(latents)
        else:
            shown = latents[:, :3].float()
            low, high = shown.amin(dim=(1, 2, 3), keepdim=True), shown.amax(dim=(1, 2, 3), keepdim=True)
            images = (shown - low) / (high - low).clamp_min(1e-6)
        return save_image_grid(images, self.folder / f"step_{step:09d}.png")
