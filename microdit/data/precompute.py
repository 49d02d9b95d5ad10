"""MDS image dataset -> MDS latents dataset (SPEC §4.3, docs/data.md): per sample its caption, the text encoder's
states of it and, per resolution, one VAE posterior sample of the resized and center-cropped image, all fp16.

Work unit = one input shard, written to <out>/<unit>/ through a temporary folder, so a finished unit is never
recomputed after a crash. Its noise is seeded from the seed and the input shard's name (not seed + rank as the
reference): the output is byte-identical whatever the number of processes, restarts or parts of a dataset.
"""
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from microdit.data.mds import (INDEX, SIZE_LIMIT, iter_samples, merge_parts, missing_columns, shard_path,
                               shard_readers)
from microdit.errors import UserError
from microdit.files import claim_folder, fingerprint, model_identity, write_json
from microdit.progress import progress as progress_bar
from microdit.provenance import provenance

log = logging.getLogger(__name__)

STATS_FILE = "precompute_stats.json"
UNIT_STATS = "unit_stats.json"
UPSAMPLED = "upsampled_"  # unit-stats key prefix: images smaller than a resolution, per resolution


@dataclass(frozen=True)
class Config:
    vae: str  # a diffusers AutoencoderKL directory or hub id; 4- or 16-channel
    text_encoder: str  # a microdit.models.encoders.create_text_encoder name
    vae_subfolder: str | None = None
    resolutions: tuple[int, ...] = (256, 512)
    batch_size: int = 32
    seed: int = 2024
    max_length: int = 77
    image_column: str = "jpg"
    caption_column: str = "caption"


def unit_dir(out: Path, unit: int) -> Path:
    return out / f"{unit:05d}"


def unit_seed(seed: int, shard_name: str) -> int:
    """The noise seed of the unit encoding the input shard `shard_name` (its path in its MDS index)."""
    return int(fingerprint([seed, shard_name])[:15], 16)


def image_transform(resolution: int):
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(resolution), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])


class Encoders:
    """The frozen VAE and text encoder on one device; the VAE runs in bf16 on a GPU, fp32 on CPU."""

    def __init__(self, config: Config, device: str):
        from microdit.models.encoders import VAE, create_text_encoder

        self.device = torch.device(device)
        self.vae = VAE(config.vae, config.vae_subfolder).to(self.device)
        if self.device.type == "cuda":
            self.vae.vae.to(torch.bfloat16)
        self.text = create_text_encoder(config.text_encoder, config.max_length).to(self.device)
        self.transforms = {r: image_transform(r) for r in config.resolutions}
        for r in config.resolutions:
            if r % self.vae.downsample:
                raise UserError(f"resolution {r}: not a multiple of the VAE's downsampling {self.vae.downsample}")

    def columns(self) -> dict[str, str]:
        c, f = self.vae.latent_channels, self.vae.downsample
        caption_shape = f"1,{self.text.context_length},{self.text.width}"
        columns = {"caption": "str", "caption_latents": f"ndarray:float16:{caption_shape}"}
        columns.update({f"latents_{r}": f"ndarray:float16:{c},{r // f},{r // f}" for r in self.transforms})
        return columns

    def encode(self, images: list, captions: list[str], generator: torch.Generator) -> dict[str, np.ndarray]:
        batch = {"caption_latents": self.text.encode(captions).to(torch.float16).cpu().numpy()}
        for r, transform in self.transforms.items():
            pixels = torch.stack([transform(image) for image in images]).to(self.device)
            batch[f"latents_{r}"] = self.vae.encode(pixels, generator).to(torch.float16).cpu().numpy()
        return batch


def valid_pair(sample: dict, config: Config) -> tuple[object, str] | str:
    """(RGB image, caption), or the skip reason."""
    caption = sample.get(config.caption_column)
    if not isinstance(caption, str) or not caption.strip():
        return "bad_caption"
    try:
        return sample[config.image_column].convert("RGB"), caption
    except (KeyError, OSError, ValueError, AttributeError):
        return "bad_image"


def encode_unit(reader, encoders: Encoders, config: Config, unit: int, out: Path, progress) -> dict:
    """Encode one input shard into <out>/<unit>/ (temp directory, then rename); returns its counts."""
    from streaming import MDSWriter

    tmp = out / f".{unit:05d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    generator = torch.Generator(encoders.device).manual_seed(unit_seed(config.seed, reader.raw_data.basename))
    counts: Counter = Counter()
    start = time.perf_counter()

    def flush(images, captions, writer) -> None:
        batch = encoders.encode(images, captions, generator)
        for i, caption in enumerate(captions):
            writer.write({"caption": caption, **{k: v[i] for k, v in batch.items()}})
        counts["images"] += len(captions)
        for r in config.resolutions:  # the reference upsampled these too (SPEC §7.11); counted, not refused
            counts[f"{UPSAMPLED}{r}"] += sum(min(image.size) < r for image in images)
        progress.update(len(captions))

    with MDSWriter(out=str(tmp), columns=encoders.columns(), compression=None, size_limit=SIZE_LIMIT) as writer:
        images, captions = [], []
        for i, sample in enumerate(iter_samples(reader)):
            pair = valid_pair(sample, config)
            if isinstance(pair, str):
                counts[pair] += 1
                log.warning("%s: sample %d skipped: %s", shard_path(reader), i, pair)
                continue
            images.append(pair[0])
            captions.append(pair[1])
            if len(images) == config.batch_size:
                flush(images, captions, writer)
                images, captions = [], []
        if images:
            flush(images, captions, writer)
    counts["seconds"] = time.perf_counter() - start
    (tmp / UNIT_STATS).write_text(json.dumps(dict(counts)))
    os.replace(tmp, unit_dir(out, unit))
    return dict(counts)


def run_rank(in_dir: str, out_dir: str, config: Config, rank: int = 0, world: int = 1, device: str = "cpu") -> int:
    """Encode this rank's unfinished units; returns how many it encoded."""
    readers = shard_readers(in_dir)
    out = Path(out_dir)
    todo = [u for u in range(rank, len(readers), world) if not (unit_dir(out, u) / "index.json").is_file()]
    if not todo:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    encoders = Encoders(config, device)
    total = sum(readers[u].samples for u in todo)
    with torch.inference_mode(), progress_bar(total=total, unit="img", desc=f"precompute rank {rank}") as progress:
        for unit in todo:
            encode_unit(readers[unit], encoders, config, unit, out, progress)
    return len(todo)


def merge(in_dir: str, out_dir: str, config: Config) -> dict:
    """<out>/index.json over all units (all must be finished) and the throughput stats."""
    out = Path(out_dir)
    units = [unit_dir(out, u) for u in range(len(shard_readers(in_dir)))]
    if not units:
        raise UserError(f"{in_dir}: the dataset has no samples (did convert's rules filter every image out? see its "
                        f"convert.json)")
    missing = [str(u) for u in units if not (u / "index.json").is_file()]
    if missing:
        raise UserError(f"{out}: {len(missing)} unit(s) not finished yet, e.g. {missing[0]}; rerun precompute")
    totals: Counter = Counter()
    for unit in units:
        totals.update(json.loads((unit / UNIT_STATS).read_text()))
    seconds, images = totals.pop("seconds", 0.0), totals.pop("images", 0)
    upsampled = {key[len(UPSAMPLED):]: totals.pop(key) for key in sorted(totals) if key.startswith(UPSAMPLED)}
    if images == 0:
        raise UserError(f"{in_dir}: every sample was skipped ({dict(totals)}); no latents written")
    merge_parts(out, units)
    for r, n in upsampled.items():
        if n:
            log.warning("%s: %d of %d images have a short side under %s px: their latents_%s are upsampled",
                        out, n, images, r, r)
    stats = {"images": images, "skipped": dict(totals), "upsampled": upsampled, "encode_seconds": round(seconds, 3),
             "images_per_second_per_process": round(images / seconds, 2) if seconds else None,
             "config": asdict(config), "provenance": provenance()}
    write_json(stats, out / STATS_FILE)
    return stats


def input_identity(in_dir: str) -> dict:
    """What the latents are computed from: the input dataset's index and its shard files' sizes and modification
    times (a new convert writes new files, even where sizes happen to agree)."""
    files = {}
    for reader in shard_readers(in_dir):
        stat = shard_path(reader).stat()
        files[reader.raw_data.basename] = [stat.st_size, stat.st_mtime_ns]
    return {"index": (Path(in_dir) / INDEX).read_text(), "files": files}


def check_columns(in_dir: str, config: Config) -> None:
    """The caption and image columns exist in every input shard: a wrong name would skip every sample as bad."""
    missing, names = missing_columns(in_dir, [config.caption_column, config.image_column])
    if missing:
        option = "--caption-column" if missing[0] == config.caption_column else "--image-column"
        raise UserError(f"{Path(in_dir) / INDEX}: no column {missing[0]!r} ({option}); its columns are "
                        f"{', '.join(names)}")


def precompute(in_dir: str, out_dir: str, config: Config, processes: int = 1, device: str | None = None) -> dict:
    """All units with `processes` workers (one per GPU when there are GPUs), then the merge. Finished units are
    skipped on a rerun only if they were made from the same input, config and models: others are moved aside."""
    check_columns(in_dir, config)
    models = {"vae": model_identity(config.vae), "text_encoder": model_identity(config.text_encoder)}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = torch.cuda.is_available() if processes > 1 else device.startswith("cuda")
    # the VAE encodes in bf16 on GPUs and in fp32 on the CPU: units of one kind must not complete the other's
    settings = {"config": asdict(config), "input": input_identity(in_dir), "models": models,
                "vae_dtype": "bf16" if on_gpu else "fp32"}
    stale = claim_folder(out_dir, fingerprint(settings))
    if stale is not None:
        log.warning("%s: its units were encoded from another input, config or device; moved to %s", out_dir, stale)
    if processes > 1:
        # spawned, as CUDA needs; a worker's exception comes back as itself (a full disk: the CLI's one line)
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            ranks = [pool.submit(run_rank, in_dir, out_dir, config, rank, processes,
                                 f"cuda:{rank}" if on_gpu else "cpu") for rank in range(processes)]
            for rank in ranks:
                rank.result()
    else:
        run_rank(in_dir, out_dir, config, device=device)
    return merge(in_dir, out_dir, config)
