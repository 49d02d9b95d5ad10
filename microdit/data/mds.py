"""Reading and merging MosaicML Streaming (MDS) datasets outside a StreamingDataset, with errors that name the file.

Writers in this package always write into sub-directories <out>/<part>/ and then merge their index.json files
into <out>/index.json with streaming's merge_index, the reference's convention for parallel writers."""
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

from microdit.errors import UserError

log = logging.getLogger(__name__)

INDEX = "index.json"
SIZE_LIMIT = 256 << 20  # bytes per shard file, as the reference


def read_index(mds_dir: str | os.PathLike) -> dict:
    path = Path(mds_dir) / INDEX
    if not path.is_file():
        raise UserError(f"{path}: missing (not an MDS dataset, or its writer did not finish)")
    try:
        index = json.loads(path.read_text())
        index["shards"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not an MDS index ({err})") from None
    return index


def missing_columns(mds_dir: str | os.PathLike, wanted: list[str]) -> tuple[list[str], list[str]]:
    """(the wanted columns a shard lacks, that shard's columns), or ([], []) when every shard has them all: read off
    the index, before a reader or a loader worker would fail on a sample."""
    for shard in read_index(mds_dir)["shards"]:
        names = shard.get("column_names", [])
        if missing := [column for column in wanted if column not in names]:
            return missing, names
    return [], []


def shard_readers(mds_dir: str | os.PathLike) -> list:
    """One streaming reader per shard, after checking that every shard file is complete."""
    from streaming.base.format import reader_from_json

    readers = []
    for shard in read_index(mds_dir)["shards"]:
        if shard.get("format") != "mds" or shard.get("zip_data"):
            raise UserError(f"{Path(mds_dir) / INDEX}: only uncompressed MDS shards are supported")
        raw = shard["raw_data"]
        path = Path(mds_dir) / raw["basename"]
        size = path.stat().st_size if path.is_file() else None
        if size != raw["bytes"]:
            found = "missing" if size is None else f"{size} of {raw['bytes']} bytes"
            raise UserError(f"{path}: truncated or missing shard ({found})")
        readers.append(reader_from_json(str(mds_dir), None, shard))
    return readers


def shard_path(reader) -> Path:
    return Path(reader.dirname) / reader.raw_data.basename


def iter_samples(reader) -> Iterator[dict]:
    for i in range(reader.samples):
        try:
            yield reader.get_item(i)
        except (ValueError, IndexError, OSError) as err:
            raise UserError(f"{shard_path(reader)}: sample {i} unreadable ({err})") from None


def count(mds_dir: str | os.PathLike) -> int:
    return sum(shard["samples"] for shard in read_index(mds_dir)["shards"])


def merge_parts(root: str | os.PathLike, parts: list[str | os.PathLike]) -> None:
    """<root>/index.json listing the shards of the <root>/<part>/ datasets, in the order given. Merged in a staging
    directory and renamed into place: replaces an older index atomically (merge_index refuses to overwrite)."""
    from streaming.base.util import merge_index

    staging = Path(root) / ".merge"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    merge_index([str(Path(p) / INDEX) for p in parts], str(staging), keep_local=True)
    os.replace(staging / INDEX, Path(root) / INDEX)
    staging.rmdir()
