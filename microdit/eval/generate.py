"""Batched, resumable, multi-GPU sampling of evaluation images: one PNG per caption, named by its index.

Images are cut into fixed batches (indices [b*B, (b+1)*B)); batch b is drawn with seed `batch_seed(seed, b)` and
belongs to rank b mod world_size. So every image depends only on (checkpoint, captions, seed, batch size, steps,
guidance), never on how many GPUs ran or how often the job was restarted: a rerun skips images already written
(each PNG is written atomically) and redraws only batches with missing files.
"""
import os
from pathlib import Path
from typing import Callable

import torch

from microdit.files import atomic_write

SEED_STRIDE = 1 << 20  # batches per seed before two seeds' noise could coincide


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def batch_seed(seed: int, batch: int) -> int:
    return seed * SEED_STRIDE + batch


def rank_batches(num_images: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, range]]:
    """(batch number, image indices) of the batches this rank draws."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    count = -(-num_images // batch_size)
    return [(b, range(b * batch_size, min((b + 1) * batch_size, num_images))) for b in range(rank, count, world_size)]


def save_png(image: torch.Tensor, path: Path) -> None:
    """(3,H,W) in [0,1] -> an 8-bit PNG, written atomically."""
    from torchvision.utils import save_image

    atomic_write(path, lambda tmp: save_image(image.float().cpu(), tmp, format="PNG"))


def generate_images(model, captions: list[str], path_for: Callable[[int], Path], *, steps: int, guidance: float,
                    seed: int, batch_size: int, rank: int = 0, world_size: int = 1, log=print) -> dict:
    """Draw this rank's missing images; `model` is a LatentDiffusion (anything with its `generate`)."""
    written = skipped = 0
    for batch, indices in rank_batches(len(captions), batch_size, rank, world_size):
        missing = [i for i in indices if not path_for(i).is_file()]
        skipped += len(indices) - len(missing)
        if not missing:
            continue
        images = model.generate(prompt=[captions[i] for i in indices], num_inference_steps=steps,
                                guidance_scale=guidance, seed=batch_seed(seed, batch))
        for i, image in zip(indices, images):
            if i in missing:
                save_png(image, path_for(i))
        written += len(missing)
        log(f"batch {batch}: {len(missing)} images written ({indices.start}..{indices.stop - 1})")
    return {"written": written, "skipped": skipped}


def distributed_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else torchrun's RANK / WORLD_SIZE, else SLURM's task id and count, else (0, 1)."""
    env = os.environ
    if rank is None:
        rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    if world_size is None:
        world_size = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    return rank, world_size
