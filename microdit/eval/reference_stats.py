"""Feature statistics of the reference images, computed once per (feature network, mode, resolution) and saved
as .npz in the results tree (clean-fid's `make_custom_stats` would write into site-packages instead).

Each reference image is resized (short side, bicubic) and center-cropped to the evaluation resolution first, the
same geometry the generated images have. The reference is a folder of image files or of webdataset shards; shard
images are unpacked into a scratch folder next to the output and removed afterwards.
"""
import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from microdit.data.shards import IMAGE_EXTS, finished_shards, tar_path
from microdit.errors import UserError
from microdit.eval.fid import FeatureExtractor, folder_features, save_stats, statistics


def center_crop(resolution: int):
    """HxWx3 uint8 -> resolution x resolution x 3 uint8 (clean-fid's `custom_image_tranform` hook)."""
    def transform(image: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(image)
        scale = resolution / min(pil.size)
        size = (max(resolution, round(pil.width * scale)), max(resolution, round(pil.height * scale)))
        pil = pil.resize(size, Image.BICUBIC)
        left, top = (pil.width - resolution) // 2, (pil.height - resolution) // 2
        return np.asarray(pil.crop((left, top, left + resolution, top + resolution)))

    return transform


def unpack_shard_images(wds_dir: Path, dest: Path, keys: set[str] | None = None) -> int:
    """Copy the image members of the finished shards into dest (named by key); returns how many."""
    count = 0
    for shard_id in sorted(finished_shards(wds_dir)):
        with tarfile.open(tar_path(wds_dir, shard_id)) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition(".")
                if member.isfile() and ext.lower() in IMAGE_EXTS and (keys is None or key in keys):
                    (dest / f"{key.replace('/', '_')}.{ext.lower()}").write_bytes(tar.extractfile(member).read())
                    count += 1
    return count


def is_shard_dir(path: Path) -> bool:
    return bool(finished_shards(path))


@contextmanager
def reference_folder(source: str | os.PathLike, scratch_parent: Path, keys: set[str] | None = None):
    """A folder holding the reference images: `source` itself, or the shards' images unpacked."""
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"{source}: not a directory of images or of webdataset shards")
    if not is_shard_dir(source):
        if keys is not None:
            raise UserError(f"{source}: --captions selects images by key, which needs webdataset shards")
        yield source
        return
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".reference_images.", dir=scratch_parent))
    try:
        if unpack_shard_images(source, scratch, keys) == 0:
            raise UserError(f"{source}: no images found in the finished shards")
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compute_reference_stats(source: str | os.PathLike, out: str | os.PathLike, extractor: FeatureExtractor,
                            mode: str, resolution: int, device="cpu", batch_size: int = 64,
                            keys: set[str] | None = None) -> dict:
    """Write the statistics file; returns its metadata. `keys` limits shard images to those image ids."""
    out = Path(out)
    with reference_folder(source, out.parent, keys) as folder:
        features = folder_features(folder, extractor, mode, device, batch_size, center_crop(resolution))
    if keys is not None and len(features) < len(keys):
        raise UserError(f"{source}: {len(keys) - len(features)} of the {len(keys)} selected images are missing")
    mu, sigma = statistics(features)
    meta = {"feature_extractor": extractor.name, "metric": extractor.metric, "mode": mode,
            "resolution": resolution, "num_images": len(features), "source": str(source)}
    save_stats(out, mu, sigma, **meta)
    return meta
