"""TextCaps (train + validation), first reference caption per image. Read from the hub's parquet conversion with
pyarrow rather than the script-based `datasets` loader, which current `datasets` versions no longer run.
One shard per parquet file. Not filtered or resized downstream (SPEC §4.1: convert with --min-side 0 --resize-to 0)."""
import re
from pathlib import Path

from microdit.data.shards import Sample, write_shard
from microdit.data.sources.common import run_shards, select_part, select_subset
from microdit.errors import UserError

HELP = "TextCaps train+validation (HuggingFaceM4/TextCaps parquet files), first caption per image"
REPO = "HuggingFaceM4/TextCaps"
REVISION = "refs/convert/parquet"
SPLITS = ("train", "validation")


def add_arguments(parser) -> None:
    pass


SPLIT_PART = re.compile(rf"(^|/)(partial-)?({'|'.join(SPLITS)})([-_/.]|$)")


def parquet_files(repo_files: list[str]) -> list[str]:
    """The train and validation parquet files of the repo listing ('default/train/0000.parquet' on the
    conversion branch, 'data/train-00000-of-00004.parquet' on main), in a stable order."""
    return sorted(f for f in repo_files if f.endswith(".parquet") and SPLIT_PART.search(f))


def parquet_samples(path: str | Path, skipped: dict[str, int]):
    """Samples from one parquet file (columns image {bytes}, image_id, reference_strs)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["image", "image_id", "reference_strs"])
    except Exception as err:  # pyarrow raises several unrelated types for bad files
        raise UserError(f"{path}: unreadable TextCaps parquet ({err})") from None
    for row in table.to_pylist():
        captions = [c for c in (row["reference_strs"] or []) if c and c.strip()]
        image = (row["image"] or {}).get("bytes")
        if not captions or not image:
            reason = "no_caption" if not captions else "no_image"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        yield Sample(key=str(row["image_id"]), image=image, caption=captions[0].strip(),
                     meta={"image_id": row["image_id"]})


def parquet_shard(out: Path, shard_id: int, path: str | Path) -> dict:
    skipped: dict[str, int] = {}
    return write_shard(out, shard_id, parquet_samples(path, skipped), skipped)


def download(args) -> dict:
    from microdit.data.sources.fetch import hub_download, hub_files

    files = select_subset(parquet_files(hub_files(REPO, revision=REVISION)), args.subset)
    out = Path(args.out)

    def make_shard(i: int) -> dict:
        path = hub_download(REPO, files[i], out / "_hub", revision=REVISION)
        stats = parquet_shard(out, i, path)
        path.unlink()
        return stats

    return run_shards(out, select_part(list(range(len(files))), args), make_shard)
