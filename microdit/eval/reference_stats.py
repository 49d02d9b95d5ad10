"""Feature statistics of the reference images, computed once per (feature network, mode, resolution) and saved
as .npz in the results tree (clean-fid's `make_custom_stats` would write into site-packages instead).

Each reference image is resized (short side, bicubic) and center-cropped to the evaluation resolution first, the
same geometry the generated images have. The reference is a folder of image files or of webdataset shards; the
images that decode within the pixel cap are unpacked (shards) or linked (a folder) into a scratch folder next to the
output, removed afterwards; the others are skipped, logged and counted, as convert does.
"""
import logging
import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from microdit.data.images import MAX_PIXELS, decode_image
from microdit.data.shards import IMAGE_EXTS, finished_shards, tar_path
from microdit.errors import UserError
from microdit.eval.fid import FeatureExtractor, folder_features, frechet_distance, save_stats, statistics
from microdit.files import write_json
from microdit.provenance import provenance
from microdit.progress import progress

log = logging.getLogger(__name__)


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


def shard_images(wds_dir: Path, keys: set[str] | None = None) -> Iterator[tuple[str, bytes, Path | None]]:
    """(file name, bytes, None) of the finished shards' image members (named by key)."""
    for shard_id in sorted(finished_shards(wds_dir)):
        with tarfile.open(tar_path(wds_dir, shard_id)) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition(".")
                if member.isfile() and ext.lower() in IMAGE_EXTS and (keys is None or key in keys):
                    yield f"{key.replace('/', '_')}.{ext.lower()}", tar.extractfile(member).read(), None


def folder_images(folder: Path) -> Iterator[tuple[str, bytes, Path | None]]:
    """(file name, bytes, path) of the image files under `folder` that clean-fid would read."""
    from cleanfid.utils import EXTENSIONS

    for path in sorted(p for p in folder.rglob("*") if p.suffix[1:] in EXTENSIONS and p.is_file()):
        yield str(path.relative_to(folder)).replace(os.sep, "_"), path.read_bytes(), path


def stage_images(images: Iterable[tuple[str, bytes, Path | None]], dest: Path, max_pixels: int,
                 skipped: dict[str, int]) -> int:
    """Put the images that decode within the pixel cap into dest (a folder's files as links); the others are
    skipped, logged and counted by reason, as convert does. Returns how many were put."""
    count = 0
    for name, data, path in progress(images, desc="reference images", unit="img"):
        if not name.lower().endswith(".npy"):  # clean-fid also reads arrays; they need no decoding
            image, reason = decode_image(data, max_pixels)
            if image is None:
                log.warning("reference image %s skipped: %s", path or name, reason)
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
        if path is None:
            (dest / name).write_bytes(data)
        else:
            os.symlink(path.resolve(), dest / name)
        count += 1
    return count


@contextmanager
def reference_folder(source: str | os.PathLike, scratch_parent: Path, keys: set[str] | None = None,
                     max_pixels: int = MAX_PIXELS, skipped: dict[str, int] | None = None):
    """A scratch folder holding the reference images that can be used (the shards' images unpacked, or links to
    a folder's files); `skipped` receives the counts of the others by reason."""
    source = Path(source)
    skipped = {} if skipped is None else skipped
    if not source.is_dir():
        raise UserError(f"{source}: not a directory of images or of webdataset shards")
    shards = bool(finished_shards(source))
    if keys is not None and not shards:
        raise UserError(f"{source}: --captions selects images by key, which needs webdataset shards")
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".reference_images.", dir=scratch_parent))
    try:
        images = shard_images(source, keys) if shards else folder_images(source)
        count = stage_images(images, scratch, max_pixels, skipped)
        if count < 2:
            raise UserError(f"{source}: {count} image files usable (skipped: {skipped or 'none'}); statistics need "
                            "at least 2")
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compute_reference_stats(source: str | os.PathLike, out: str | os.PathLike, extractor: FeatureExtractor,
                            mode: str, resolution: int, device="cpu", batch_size: int = 64,
                            keys: set[str] | None = None, max_pixels: int = MAX_PIXELS,
                            halves: str | os.PathLike | None = None) -> dict:
    """Write the statistics file (and, to `halves`, the Fréchet distance between two random halves of the images);
    returns its metadata and the skipped images' counts by reason. `keys` limits shard images to those image ids."""
    out = Path(out)
    skipped: dict[str, int] = {}
    with reference_folder(source, out.parent, keys, max_pixels, skipped) as folder:
        features = folder_features(folder, extractor, mode, device, batch_size, center_crop(resolution))
    if keys is not None and len(features) + sum(skipped.values()) < len(keys):
        missing = len(keys) - len(features) - sum(skipped.values())
        raise UserError(f"{source}: {missing} of the {len(keys)} selected images are missing")
    mu, sigma = statistics(features)
    meta = {"feature_extractor": extractor.name, "metric": extractor.metric, "mode": mode,
            "resolution": resolution, "num_images": len(features), "source": str(source)}
    save_stats(out, mu, sigma, **meta)
    if halves is not None:
        write_json({**meta, "kind": "reference vs reference (two halves)", "value": halves_distance(features),
                    "num_images": len(features) // 2, "provenance": provenance()}, halves)
    return {**meta, "skipped": skipped}


def halves_distance(features: np.ndarray, seed: int = 0) -> float:
    """The Fréchet distance between two disjoint random halves of the features (seeded): what a model whose images
    are indistinguishable from the reference scores with half as many images. The distance's bias grows as the
    sets shrink, so this is above the value at the full count: a floor to read the samples' score against, not
    one they must reach."""
    order = np.random.default_rng(seed).permutation(len(features))
    half = len(features) // 2
    if half < 2:
        raise UserError(f"{len(features)} reference images: two halves need at least 4")
    first, second = statistics(features[order[:half]]), statistics(features[order[half:2 * half]])
    return frechet_distance(*first, *second)
