"""The img2dataset "webdataset" layout that every source writes and `convert` reads.

<dir>/<id:05d>.tar holds each sample as adjacent members <key>.<image ext>, <key>.txt (caption), <key>.json (metadata).
<dir>/<id:05d>_stats.json is written last, so it marks a finished shard: img2dataset's incremental mode uses the same
rule, which lets our own sources and img2dataset downloads resume the same way. A tar without its stats file is a
half-written shard; it is ignored by readers and redone by writers.
"""
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from microdit.files import atomic_write
from microdit.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
STATS_SUFFIX = "_stats.json"


@dataclass
class Sample:
    key: str
    image: bytes
    caption: str
    image_ext: str = "jpg"
    meta: dict = field(default_factory=dict)


def shard_name(shard_id: int) -> str:
    return f"{shard_id:05d}"


def tar_path(out_dir: str | os.PathLike, shard_id: int) -> Path:
    return Path(out_dir) / f"{shard_name(shard_id)}.tar"


def stats_path(out_dir: str | os.PathLike, shard_id: int) -> Path:
    return Path(out_dir) / f"{shard_name(shard_id)}{STATS_SUFFIX}"


def finished_shards(out_dir: str | os.PathLike) -> set[int]:
    """Ids of the shards whose stats file exists (tar complete)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return set()
    names = (p.name[: -len(STATS_SUFFIX)] for p in out_dir.glob(f"*{STATS_SUFFIX}"))
    return {int(n) for n in names if n.isdigit() and tar_path(out_dir, int(n)).is_file()}


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed owner/time/mode so the same samples always give the same tar bytes.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def member_key(key: str) -> str:
    """A sample's key as a tar member name: a webdataset key ends at the basename's first dot (the rest is the
    extension), so a dot in a source's file name ('img.v2.jpg') would split one sample's members apart."""
    return key.replace(".", "_")


def write_shard(out_dir: str | os.PathLike, shard_id: int, samples: Iterable[Sample],
                skipped: dict[str, int] | None = None) -> dict:
    """Write one shard's tar (temp file, then rename) and then its stats file; returns the stats."""
    count = 0
    skipped = skipped if skipped is not None else {}

    def write_tar(tmp: str) -> None:
        nonlocal count
        written = set()
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                key = member_key(sample.key)
                if key in written:  # readers merge adjacent members of one key and refuse a key seen before
                    log.warning("%s: sample %r skipped: its key %r repeats an earlier one",
                                tar_path(out_dir, shard_id), sample.key, key)
                    skipped["duplicate_key"] = skipped.get("duplicate_key", 0) + 1
                    continue
                _add_member(tar, f"{key}.{sample.image_ext}", sample.image)
                _add_member(tar, f"{key}.txt", sample.caption.encode("utf-8"))
                _add_member(tar, f"{key}.json", json.dumps(sample.meta, sort_keys=True).encode("utf-8"))
                written.add(key)
                count += 1

    atomic_write(tar_path(out_dir, shard_id), write_tar)
    return write_stats(out_dir, shard_id, count, dict(skipped))


def write_stats(out_dir: str | os.PathLike, shard_id: int, successes: int, skipped: dict[str, int]) -> dict:
    """The last step of a shard: from now on it counts as finished."""
    stats = {"count": successes + sum(skipped.values()), "successes": successes, "skipped": skipped}
    atomic_write(stats_path(out_dir, shard_id), lambda tmp: Path(tmp).write_text(json.dumps(stats, indent=1)))
    return stats


def list_shards(in_dir: str | os.PathLike) -> list[Path]:
    """The finished tars of a download directory, in id order; half-written ones are logged and left out."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise UserError(f"{in_dir}: no such directory (expected a download with NNNNN.tar shards)")
    tars = sorted(in_dir.glob("*.tar"))
    finished = [t for t in tars if (in_dir / f"{t.stem}{STATS_SUFFIX}").is_file()]
    for t in sorted(set(tars) - set(finished)):
        log.warning("%s: no %s%s, a half-written shard: left out", t, t.stem, STATS_SUFFIX)
    if not finished:
        raise UserError(f"{in_dir}: no finished shards (NNNNN.tar with NNNNN{STATS_SUFFIX})")
    return finished


def _member_runs(path: str | os.PathLike) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(key, [(extension, bytes), ...]) per run of adjacent tar members that share a key."""
    key, members = None, []
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                member_key, _, ext = base.partition(".")
                member_key = os.path.join(os.path.dirname(member.name), member_key)
                if member_key != key and members:
                    yield key, members
                    members = []
                key = member_key
                members.append((ext.lower(), tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"{path}: truncated or not a tar file ({err})") from None
    if members:
        yield key, members


def read_shard(path: str | os.PathLike,
               skipped: dict[str, int] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample; members of a sample are adjacent as in any webdataset tar.

    A key that is not exactly one sample (two images, a repeated member, or the key again after other samples) is
    skipped, logged and counted in skipped["duplicate_key"], one per image: merging its members would pair an image
    with another sample's caption, and a second sample under a used key would break key lookups downstream."""
    seen = set()
    for key, members in _member_runs(path):
        exts = [ext for ext, _ in members]
        images = sum(ext in IMAGE_EXTS for ext in exts)
        repeated = key in seen or len(set(exts)) < len(exts) or images > 1
        seen.add(key)
        if repeated:
            log.warning("%s: sample %s skipped: duplicate_key (members %s)", path, key, ", ".join(exts))
            if skipped is not None:
                skipped["duplicate_key"] = skipped.get("duplicate_key", 0) + max(images, 1)
            continue
        yield key, dict(members)
