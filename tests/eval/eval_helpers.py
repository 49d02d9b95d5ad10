"""Helpers for the evaluation tests: small image sets and webdataset shards."""
import io
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def smooth_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Colour gradients: one kind of image."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, :, None]
    return [(255 * (ramp * rng.random(3) + (1 - ramp) * rng.random(3))).repeat(size, 0).astype(np.uint8)
            for _ in range(n)]


def noise_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Uniform noise: a very different kind."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def write_folder(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        (folder / f"{i:06d}.png").write_bytes(png_bytes(image))
    return folder


def write_shards(folder: Path, images: list[np.ndarray], captions: list[str], per_shard: int = 4) -> Path:
    """The webdataset layout `microdit download coco2014` writes, through the project's own shard writer."""
    from microdit.data.shards import Sample, write_shard

    samples = [Sample(key=f"COCO_val2014_{i:012d}", image=png_bytes(image), caption=caption, image_ext="png")
               for i, (image, caption) in enumerate(zip(images, captions))]
    for shard_id, start in enumerate(range(0, len(samples), per_shard)):
        write_shard(folder, shard_id, samples[start:start + per_shard])
    return folder
