"""What every source shares: the ~1% subset, pairing archive images with captions, and one resumable shard loop."""
import contextlib
import logging
import math
import os
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from microdit.data.shards import IMAGE_EXTS, Sample, finished_shards, write_shard
from microdit.errors import UserError
from microdit.store import part_range

log = logging.getLogger(__name__)

SUBSETS = {"full": 1.0, "small": 0.01}


def select_subset(ids: list, subset: str) -> list:
    """The first ~1% of a source's archives for "small" (SPEC §4: e.g. cc12m 0..22 of 2176), all for "full"."""
    if subset not in SUBSETS:
        raise UserError(f"subset {subset!r}: expected one of {sorted(SUBSETS)}")
    return list(ids)[: max(1, math.ceil(len(ids) * SUBSETS[subset]))]


def select_part(ids: list, args) -> list:
    """This job's share of a source's shards (`--part i --parts n`): a contiguous range of them in order, keeping
    their global ids, so the parts' shards together are the whole download's. A part with none would fail at its
    convert: refused here, in the first job, naming the count to ask for."""
    return [ids[i] for i in part_range(check_parts(len(ids), args), args.part, args.parts)]


def check_parts(shards: int, args) -> int:
    if shards < args.parts:
        raise UserError(f"--parts {args.parts}: the download has only {shards} shard(s) to split (with subset "
                        f"{args.subset}); expected parts <= {shards}")
    return shards


def image_stem(name: str) -> str | None:
    """'imgs/000/abc.jpg' -> 'abc' for image members, None for anything else (annotations, captions, dirs)."""
    base = os.path.basename(name)
    stem, _, ext = base.rpartition(".")
    return stem if stem and ext.lower() in IMAGE_EXTS else None


@contextlib.contextmanager
def reading_archive(name: str | os.PathLike):
    """What a truncated or corrupt archive raises while it is read, as one line naming it."""
    try:
        yield
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise UserError(f"{name}: a broken archive ({err}); remove it and rerun the download") from None


def iter_tar_images(fileobj: IO[bytes], name: str) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) for the image members of a (possibly gzipped) tar read as a stream; `name` says which
    archive a broken one is."""
    with reading_archive(name), tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and image_stem(member.name):
                yield member.name, tar.extractfile(member).read()


def iter_zip_images(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    with reading_archive(path), zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if image_stem(name):
                yield name, archive.read(name)


def paired_samples(images: Iterable[tuple[str, bytes]], caption_for: Callable[[str], str | None],
                   skipped: dict[str, int]) -> Iterator[Sample]:
    """Samples for the images that have a caption; the others are counted in skipped['no_caption']."""
    for name, data in images:
        stem = image_stem(name)
        caption = caption_for(stem)
        if caption is None:
            skipped["no_caption"] = skipped.get("no_caption", 0) + 1
            continue
        ext = name.rpartition(".")[2].lower()
        yield Sample(key=stem, image=data, caption=caption, image_ext=ext, meta={"source_name": name})


def write_paired_shard(out: Path, shard_id: int, images: Iterable[tuple[str, bytes]],
                       caption_for: Callable[[str], str | None]) -> dict:
    skipped: dict[str, int] = {}
    samples = paired_samples(images, caption_for, skipped)
    return write_shard(out, shard_id, samples, skipped)


def run_shards(out: str | os.PathLike, shard_ids: list[int], make_shard: Callable[[int], dict]) -> dict:
    """Call make_shard(id) for every shard not finished yet; returns {'done': n, 'skipped_finished': n}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = finished_shards(out)
    todo = [i for i in shard_ids if i not in done]
    if len(todo) < len(shard_ids):
        log.info("%s: %d finished shards skipped", out, len(shard_ids) - len(todo))
    for shard_id in todo:
        stats = make_shard(shard_id)
        log.info("%s: shard %d: %d samples", out, shard_id, stats["successes"])
    return {"done": len(todo), "skipped_finished": len(shard_ids) - len(todo)}
