"""The evaluation captions: a seeded sample of N images, one caption each, written to a declared JSONL file
(`{"index": i, "image_id": ..., "caption": ...}` per line) so the exact prompt set of a score is reproducible.

Input: a directory of webdataset shards (what `microdit download coco2014` writes: the first caption of each image),
or COCO's own `captions_val2014.json`.
"""
import logging
import os
import random
import tarfile
from pathlib import Path

from microdit.data.captions import decode_caption
from microdit.data.shards import finished_shards, tar_path
from microdit.errors import UserError
from microdit.files import read_json, read_jsonl

log = logging.getLogger(__name__)


def shard_captions(wds_dir: str | os.PathLike, skipped: dict[str, int] | None = None) -> dict[str, str]:
    """image key -> caption from the `<key>.txt` members of the finished shards. A caption that is empty or not
    UTF-8 is skipped, logged and counted in skipped["bad_caption"], as convert does: one bad caption used to
    reject the whole shard."""
    wds_dir = Path(wds_dir)
    captions: dict[str, str] = {}
    for shard_id in sorted(finished_shards(wds_dir)):
        try:
            with tarfile.open(tar_path(wds_dir, shard_id)) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".txt"):
                        text = decode_caption(tar.extractfile(member).read())
                        if text is None:
                            log.warning("%s: caption %s skipped: bad_caption", tar_path(wds_dir, shard_id),
                                        member.name)
                            if skipped is not None:
                                skipped["bad_caption"] = skipped.get("bad_caption", 0) + 1
                            continue
                        captions[member.name[:-4]] = text
        except tarfile.TarError as err:
            raise UserError(f"{tar_path(wds_dir, shard_id)}: unreadable shard ({err})") from None
    return captions


def annotation_captions(path: str | os.PathLike) -> dict[str, str]:
    from microdit.data.sources.coco2014 import first_captions

    return first_captions(read_json(path, "COCO captions JSON"), str(path))


def read_source_captions(source: str | os.PathLike, skipped: dict[str, int] | None = None) -> dict[str, str]:
    captions = shard_captions(source, skipped) if Path(source).is_dir() else annotation_captions(source)
    captions = {key: text for key, text in captions.items() if text}
    if not captions:
        raise UserError(f"{source}: no captions found (expected finished webdataset shards or a COCO captions JSON)")
    return captions


def sample_captions(captions: dict[str, str], num: int, seed: int) -> list[dict]:
    """num images drawn without replacement, in draw order; the result depends only on (the key set, num, seed)."""
    if num > len(captions):
        raise UserError(f"asked for {num} captions but the source has only {len(captions)} captioned images")
    keys = random.Random(seed).sample(sorted(captions), num)
    return [{"index": i, "image_id": key, "caption": captions[key]} for i, key in enumerate(keys)]


def derange(rows: list[dict], seed: int) -> list[dict]:
    """The rows with every caption moved to another row (`caption_of`: the index it came from), by a seeded random
    single cycle (Sattolo's algorithm), so that no row keeps its own caption: the prompts of the shuffled-caption
    floor, whose images are scored against the rows' true captions."""
    if len(rows) < 2:
        raise UserError(f"shuffling needs at least 2 captions, got {len(rows)}")
    order = list(range(len(rows)))
    rng = random.Random(seed)
    for i in range(len(order) - 1, 0, -1):
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    return [{**row, "caption": rows[k]["caption"], "caption_of": rows[k]["index"]} for row, k in zip(rows, order)]


def read_caption_file(path: str | os.PathLike) -> list[dict]:
    """The rows of a caption file, checked to be numbered 0..N-1 in order (generation names images by index)."""
    rows = read_jsonl(path, "caption JSONL file")
    if not rows or any(not isinstance(r, dict) or r.get("index") != i or not isinstance(r.get("caption"), str)
                       for i, r in enumerate(rows)):
        raise UserError(f"{path}: expected lines {{\"index\": 0, 1, ..., \"caption\": str}} in order")
    return rows
