"""The tiny preset's own VAE: a small diffusers AutoencoderKL trained on the preset's images, so that decoded
samples are real pictures rather than noise, with no model hub involved.

It trains at each resolution the stages see, in turn: trained at 32 px alone, its 64 px reconstructions kept only
88 % of the held-out colours and 69 % of the counts (score-shapes); at 32 and 64 px in turn, 99 % and 82 %, and
100 % and 98 % on 4,096 images for 6,000 steps (tiny-long; small triangles had come back round). Loss:
pixel MSE + a small KL term (the VAE is only a compressor here, no perceptual or adversarial loss; an L1 loss lost
the colours: 46 %). The learning rate decays to zero on a cosine: with a constant one, the palette the decoder ends
on depended on the step it stopped at (the colour accuracy of its reconstructions fell from 99 to 92 % between steps
1000 and 1200). After training, the scaling factor is set to 1 / std of the latents, as Stable Diffusion's VAEs
do, so the denoiser sees roughly unit-variance latents (EDM's sigma_data assumption).
"""
import json
import os
from pathlib import Path

import torch

from microdit.arguments import positive_int
from microdit.data.mds import iter_samples, shard_readers
from microdit.data.precompute import image_transform
from microdit.errors import UserError
from microdit.files import atomic_folder


def build_tiny_vae(seed: int = 0, latent_channels: int = 4, widths: tuple[int, ...] = (32, 32, 32)):
    """x4 downsampling (three levels), no attention in the middle block: ~0.28 M parameters at the default widths,
    the ones the scores above were measured with."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=widths, down_block_types=("DownEncoderBlock2D",) * len(widths),
                         up_block_types=("UpDecoderBlock2D",) * len(widths), latent_channels=latent_channels,
                         layers_per_block=1, norm_num_groups=min(8, widths[0]), mid_block_add_attention=False)


def save_tiny_vae(directory: str | os.PathLike, seed: int = 0, latent_channels: int = 4) -> str:
    """An untrained tiny VAE as a diffusers directory (tests and quick runs)."""
    build_tiny_vae(seed, latent_channels).save_pretrained(directory)
    return str(directory)


def load_images(mds_dir: str | os.PathLike, resolution: int, column: str = "jpg", limit: int | None = None):
    """Images of an MDS dataset, short side resized and center-cropped to `resolution`, in [-1, 1]."""
    to_tensor = image_transform(resolution)  # exactly what precompute feeds the VAE
    images = []
    for reader in shard_readers(mds_dir):
        for sample in iter_samples(reader):
            images.append(to_tensor(sample[column].convert("RGB")))
            if limit and len(images) >= limit:
                return torch.stack(images)
    if not images:
        raise UserError(f"{mds_dir}: no images to train the VAE on")
    return torch.stack(images)


def train_tiny_vae(images: list[torch.Tensor], steps: int, batch_size: int, lr: float, seed: int,
                   kl_weight: float = 1e-6, latent_channels: int = 4, log=print):
    """`images`: one tensor per resolution, the smallest first. Step k trains on resolution k mod their number, a
    larger one in batches of the pixels of `batch_size` smallest images, so every step costs about the same."""
    vae = build_tiny_vae(seed, latent_channels).train()
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    smallest = images[0].shape[-1]

    def loss_at(step: int) -> torch.Tensor:
        pool = images[step % len(images)]
        size = min(len(pool), max(1, batch_size * smallest ** 2 // pool.shape[-1] ** 2))
        batch = pool[torch.randint(len(pool), (size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        return (reconstruction - batch).square().mean() + kl_weight * posterior.kl().mean()

    final_loss = fit(loss_at, steps, optimizer, schedule, "vae", log)
    vae.eval()
    reconstruction_mse, latents = {}, []
    with torch.no_grad():
        for pool in images:
            means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pool.split(64)])
            decoded = torch.cat([vae.decode(chunk).sample for chunk in means.split(64)])
            reconstruction_mse[pool.shape[-1]] = float((decoded - pool).square().mean())
            latents.append(means.flatten())
    vae.register_to_config(scaling_factor=float(1.0 / torch.cat(latents).std()))
    return vae, {"steps": steps, "final_loss": final_loss, "reconstruction_mse": reconstruction_mse,
                 "scaling_factor": vae.config.scaling_factor, "images": len(images[0])}


def fit(loss_at, steps: int, optimizer, schedule, name: str, log=print) -> float:
    """`steps` optimizer steps on loss_at(step), the schedule stepped after each, logged every 50; the last loss
    (the preset's small models, this VAE and its CLIP, train this way)."""
    for step in range(steps):
        loss = loss_at(step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"{name} step {step:4d}  loss {loss.item():.5f}")
    return loss.item()


def run(args) -> None:
    torch.manual_seed(args.seed)
    images = [load_images(args.input, resolution, limit=args.max_images) for resolution in sorted(args.resolutions)]
    vae, stats = train_tiny_vae(images, args.steps, args.batch_size, args.lr, args.seed,
                                latent_channels=args.latent_channels)
    save_trained_vae(vae, stats, args.out)
    print(json.dumps(stats))


def save_trained_vae(vae, stats: dict, out: str | os.PathLike) -> None:
    """The diffusers folder with its training stats, written whole or not at all."""
    out = Path(out)
    if out.exists():
        raise UserError(f"{out}: exists; remove it to retrain the VAE")

    def fill(staging: Path) -> None:
        vae.save_pretrained(staging)
        (staging / "train_stats.json").write_text(json.dumps(stats, indent=2))

    atomic_folder(out, fill)


def register(subparsers) -> None:
    p = subparsers.add_parser("train-vae", help="train the tiny preset's AutoencoderKL on an MDS image dataset")
    p.add_argument("--input", required=True, help="MDS image dataset (from `microdit convert`)")
    p.add_argument("--out", required=True, help="diffusers directory to create")
    p.add_argument("--resolutions", type=positive_int, nargs="+", default=[32],
                   help="image sizes trained on in turn, those the stages see (default 32)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step at the smallest resolution (default 16)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--latent-channels", type=int, default=4, choices=(4, 16),
                   help="channels of the latent space (the denoiser's in_channels)")
    p.add_argument("--max-images", type=int, default=512, help="images read from the dataset (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the batches (default 0)")
    p.set_defaults(func=run)
