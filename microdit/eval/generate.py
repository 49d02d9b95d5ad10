"""Batched, resumable, multi-GPU sampling of evaluation images: one PNG per caption, named by its index.

Image i is drawn from noise seeded with `image_seed(seed, i)` (on the CPU), so every image depends only on
(checkpoint, captions, seed, steps, guidance, precision), never on the batch size, on how many GPUs ran or on how
often the job was restarted, nor on how many jobs shared the images out (`part_range`, merged with `link_images`;
the batch size and the device can still change the rounding of the network's kernels). Images are cut into fixed
batches (indices [b*B, (b+1)*B)) that belong to rank b mod world_size; a rerun skips images already written (each
PNG is written atomically) and draws only the missing ones. The output folder is claimed for its settings
(`claim_samples`): images drawn under other settings are moved aside, not reused.
"""
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from microdit.errors import UserError
from microdit.files import atomic_write, claim_folder, fingerprint, is_claimed
from microdit.progress import progress
from microdit.store import part_range as even_parts

SEED_STRIDE = 1 << 20  # images per seed before two seeds' noise could coincide


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def generated_images(folder: str | os.PathLike, rows: list[dict]) -> list[Path]:
    """The generated image of each caption row; a scorer refuses a folder missing any."""
    paths = [Path(folder) / image_name(r["index"]) for r in rows]
    if absent := [p.name for p in paths if not p.is_file()]:
        raise UserError(f"{folder}: {len(absent)} images missing (first {absent[0]}); rerun generate")
    return paths


def generated_pixels(folder: str | os.PathLike, rows: list[dict]):
    """The generated image of each caption row as HxWx3 uint8, read one at a time."""
    import numpy as np
    from PIL import Image

    for path in generated_images(folder, rows):
        with Image.open(path) as image:
            yield np.asarray(image.convert("RGB"))


def image_seed(seed: int, index: int) -> int:
    return seed * SEED_STRIDE + index


def rank_batches(num_images: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 part: range | None = None) -> list[tuple[int, range]]:
    """(batch number, image indices) of the batches this rank draws (of those starting in `part`, if given)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    count = -(-num_images // batch_size)
    batches = [(b, range(b * batch_size, min((b + 1) * batch_size, num_images))) for b in range(count)]
    return [batch for batch in batches if part is None or batch[1].start in part][rank::world_size]


def part_range(num_images: int, batch_size: int, part: int, parts: int) -> range:
    """The images of part `part` of `parts` (a job's share): a run of whole batches, so that every image is drawn in
    the batch it would be drawn in by one job (the batch can change the kernels' rounding)."""
    if not 0 <= part < parts:
        raise UserError(f"--part {part} of --parts {parts}: expected 0 <= part < parts")
    batches = even_parts(-(-num_images // batch_size), part, parts)
    return range(batches.start * batch_size, min(batches.stop * batch_size, num_images))


def link_images(part: Path, out: Path, skip: tuple[str, ...]) -> int:
    """Hard-link (else copy) every file under a part's folder into `out` at the same relative path, each replacing
    what was there at once; names in `skip` and hidden files (claim markers, unfinished writes) stay. Returns the
    number of files."""
    count = 0
    for path in sorted(part.rglob("*")):
        if path.is_dir() or path.name in skip or path.name.startswith("."):
            continue
        target = out / path.relative_to(part)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.linking")
        staged.unlink(missing_ok=True)
        try:
            os.link(path, staged)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(path, staged)
        os.replace(staged, target)
        count += 1
    return count


def claim_samples(folder: str | os.PathLike, settings: dict, rank: int = 0, wait_s: float = 600.0,
                  log=print) -> None:
    """Make `folder` hold only images of `settings` (what determines an image): rank 0 moves images drawn under
    other settings aside (files.claim_folder); the other ranks wait until it has, so that none skips a stale
    image."""
    digest = fingerprint(settings)
    if rank == 0:
        stale = claim_folder(folder, digest)
        if stale is not None:
            log(f"{folder}: its images were drawn with other settings; moved to {stale}")
        return
    deadline = time.monotonic() + wait_s
    while not is_claimed(folder, digest):
        if time.monotonic() > deadline:
            raise UserError(f"{folder}: rank 0 did not claim the folder for these settings within {wait_s:.0f} s "
                            f"(is rank 0 running with the same options?)")
        time.sleep(1.0)


def save_png(image: torch.Tensor, path: Path) -> None:
    """(3,H,W) in [0,1] -> an 8-bit PNG, written atomically."""
    from torchvision.utils import save_image

    atomic_write(path, lambda tmp: save_image(image.float().cpu(), tmp, format="PNG"))


def generate_images(model, captions: list[str], path_for: Callable[[int], Path], *, steps: int, guidance: float,
                    seed: int, batch_size: int, rank: int = 0, world_size: int = 1, part: range | None = None) -> dict:
    """Draw this rank's missing images (of `part`, if given); `model` is a LatentDiffusion (anything with its
    `generate`)."""
    written = skipped = 0
    batches = rank_batches(len(captions), batch_size, rank, world_size, part)
    with progress(total=sum(len(indices) for _, indices in batches), desc=f"generate rank {rank}",
                  unit="img") as bar:
        for _, indices in batches:
            missing = [i for i in indices if not path_for(i).is_file()]
            skipped += len(indices) - len(missing)
            if missing:
                images = model.generate(prompt=[captions[i] for i in missing], num_inference_steps=steps,
                                        guidance_scale=guidance, seed=[image_seed(seed, i) for i in missing])
                for i, image in zip(missing, images):
                    save_png(image, path_for(i))
                written += len(missing)
            bar.update(len(indices))
    return {"written": written, "skipped": skipped}


def distributed_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else torchrun's RANK / WORLD_SIZE, else the task of an srun step (SLURM_PROCID /
    SLURM_STEP_NUM_TASKS), else (0, 1). SLURM_NTASKS is not read: a process started inside a many-task allocation
    without srun (Snakemake running there, say) inherits it and would draw only its share."""
    env = os.environ
    if rank is None:
        rank = int(env.get("RANK", env.get("SLURM_PROCID", 0) if "SLURM_STEP_NUM_TASKS" in env else 0))
    if world_size is None:
        world_size = int(env.get("WORLD_SIZE", env.get("SLURM_STEP_NUM_TASKS", 1)))
    if not 0 <= rank < world_size:  # such a rank would wait forever for a rank 0 that is not coming
        raise UserError(f"rank {rank} of {world_size} processes: expected 0 <= rank < world size")
    return rank, world_size
