"""MDS image dataset -> MDS latents dataset (SPEC §4.3): the only data training reads.

Per sample and resolution r: Resize(r, bicubic, antialias) of the short side, CenterCrop(r), [-1, 1], one VAE posterior
sample times the scaling factor (stored fp16, shape (C, r/f, r/f)); the caption through the text encoder (fp16,
(1, L, W)). Columns: caption, caption_latents, latents_<r>.

Work unit = one input shard. Unit u goes to process u % world and is written to <out>/<u:05d>/ through a temporary
directory, so a finished unit is never recomputed after a crash. Its noise generator is seeded from the seed and the
input shard's name (not seed + rank as the reference), which keeps the output byte-identical whatever the number of
processes, restarts or parts of a dataset (convert names a shard by its download shard, whichever part holds it).
When every unit exists, the unit indexes are merged into <out>/index.json and throughput goes to
<out>/precompute_stats.json.
"""
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from microdit.data.mds import (INDEX, SIZE_LIMIT, iter_samples, merge_parts, missing_columns, shard_path,
                               shard_readers)
from microdit.errors import FULL_DISK, UserError
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


def _spawned_rank(rank: int, world: int, in_dir: str, out_dir: str, config: Config) -> None:
    device = f"cuda:{rank}" if torch.cuda.is_available() else "cpu"
    run_rank(in_dir, out_dir, config, rank, world, device)


def worker_failure(err: Exception) -> Exception:
    """A worker's full disk as the OSError it met, which the CLI reports in one line like any step's; anything else
    as the worker raised it. A worker's exception reaches the parent as its traceback's text only."""
    raised = [line for line in str(err).splitlines() if line.strip()][-1]
    found = re.fullmatch(r"OSError: \[Errno (\d+)\] (.+?)(?:: '(.*)')?", raised)
    if found and int(found[1]) in FULL_DISK:
        return OSError(int(found[1]), found[2], found[3])
    return err


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
    settings = {"config": asdict(config), "input": input_identity(in_dir), "models": models,
                "unit_seeds": "seed and input shard name"}  # units seeded by seed + number before this are not ours
    if not (torch.cuda.is_available() if processes > 1 else device.startswith("cuda")):
        # the VAE encodes in fp32 here and in bf16 on GPUs: units of one kind must not complete the other's. (GPU
        # runs stay unmarked, so that latents encoded before this mark keep their fingerprint.)
        settings["encoded_on"] = "cpu, fp32"
    stale = claim_folder(out_dir, fingerprint(settings))
    if stale is not None:
        log.warning("%s: its units were encoded from another input, config or device; moved to %s", out_dir, stale)
    if processes > 1:
        try:
            torch.multiprocessing.spawn(_spawned_rank, args=(processes, in_dir, out_dir, config), nprocs=processes)
        except torch.multiprocessing.ProcessRaisedException as err:
            raise worker_failure(err) from None
    else:
        run_rank(in_dir, out_dir, config, device=device)
    return merge(in_dir, out_dir, config)
