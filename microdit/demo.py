"""`microdit demo`: the whole model path end to end on CPU in about a minute, offline.

Drawn pictures with captions -> a tiny AutoencoderKL (random weights, built from a config) and the MiniLM text
encoder -> MicroDiT_Nano_2 trained a few hundred EDM steps with 50% patch masking -> Heun sampling with CFG ->
a PNG grid and a loss log. The VAE is untrained, so decoded pictures are not meant to look like the inputs; the
Snakemake tiny preset trains its VAE first. What this shows is that every piece runs and the loss falls.
"""
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from microdit.checkpoint import atomic_write, save_dit
from microdit.diffusion.edm import EDMConfig
from microdit.models.dit import create_dit
from microdit.models.encoders import VAE, create_text_encoder
from microdit.tiny_vae import save_tiny_vae
from microdit.models.latent_diffusion import LatentDiffusion
from microdit.sampling import save_image_grid

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def drawn_examples(size: int) -> tuple[torch.Tensor, list[str]]:
    """One image per (color, shape): a single centred shape on a grey background, in [-1, 1]."""
    images, captions = [], []
    for color_name, rgb in COLORS.items():
        for shape in SHAPES:
            image = Image.new("RGB", (size, size), (128, 128, 128))
            box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=rgb)
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
            images.append(pixels.permute(2, 0, 1).float() / 127.5 - 1)
            captions.append(f"a {color_name} {shape}")
    return torch.stack(images), captions


def run_demo(out: Path, steps: int, image_size: int, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    vae, text = VAE(save_tiny_vae(out / "vae", seed)), create_text_encoder("minilm")
    images, captions = drawn_examples(image_size)
    generator = torch.Generator().manual_seed(seed)
    latents = vae.encode(images, generator)
    caption_latents = text.encode(captions)

    torch.manual_seed(seed)
    dit = create_dit("MicroDiT_Nano_2", input_size=latents.shape[-1], in_channels=latents.shape[1],
                     caption_channels=text.width, pos_interp_scale=latents.shape[-1] / 16)
    model = LatentDiffusion(dit, vae, text, EDMConfig(), train_mask_ratio=0.5)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    dit.train()
    for step in range(steps):
        loss = model.loss(latents, caption_latents)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)

    dit.eval()
    samples = model.generate(caption_latents=caption_latents, num_inference_steps=20, guidance_scale=3.0, seed=seed)
    save_image_grid(torch.cat([vae.decode(latents), samples]), out / "grid.png", nrow=len(captions))
    save_dit(dit, out / "dit.safetensors", "MicroDiT_Nano_2",
             extra={"vae": str(out / "vae"), "text_encoder": "minilm", "vae_downsample": vae.downsample})
    summary = {"steps": steps, "first_loss": losses[0], "final_loss": sum(losses[-20:]) / min(20, len(losses)),
               "captions": captions, "grid": str(out / "grid.png"), "checkpoint": str(out / "dit.safetensors")}
    atomic_write(out / "demo.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    return summary


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train and sample the nano model on drawn pictures (CPU, ~1 minute)")
    p.add_argument("--out", default="results/demo", help="output directory (default results/demo)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda args: print(json.dumps(run_demo(Path(args.out), args.steps, args.image_size,
                                                               args.seed), indent=2)))
