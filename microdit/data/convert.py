"""Download shards (img2dataset layout) -> MDS image dataset, applying the SPEC §4.1 filter (docs/data.md): skip
images whose short side is below `min_side`, resize larger ones to `resize_to`, never flip. width/height store the
saved size (fixing the reference's CC12M bug, SPEC §7.10). Bad samples are skipped, logged and counted by reason.
"""
import json
import logging
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from streaming import MDSWriter
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import resize

from microdit.data.captions import clean_caption, decode_caption
from microdit.data.images import MAX_PIXELS, decode_image
from microdit.data.mds import SIZE_LIMIT, merge_parts
from microdit.data.shards import IMAGE_EXTS, list_shards, read_shard
from microdit.errors import UserError
from microdit.progress import progress
from microdit.provenance import provenance

log = logging.getLogger(__name__)

COLUMNS = {"key": "str", "width": "int32", "height": "int32", "jpg": "jpeg", "caption": "str"}
STATS_FILE = "convert_stats.json"
SKIP_REASONS = ("too_small", "too_large", "bad_image", "no_image", "bad_caption", "duplicate_key")


@dataclass(frozen=True)
class Rules:
    min_side: int = 256
    resize_to: int = 512  # 0 = never resize
    clean_captions: bool = False
    max_pixels: int = MAX_PIXELS  # larger images are skipped before they are decoded


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    return resize(image, size, interpolation=InterpolationMode.BICUBIC, antialias=True)


def convert_sample(key: str, files: dict[str, bytes], rules: Rules) -> tuple[dict | None, str]:
    """(MDS record, "kept" or "resized") for a kept sample, (None, skip reason) otherwise."""
    caption = decode_caption(files.get("txt"))
    if caption is not None and rules.clean_captions:
        caption = clean_caption(caption) or None
    if caption is None:
        return None, "bad_caption"
    data = next((files[ext] for ext in IMAGE_EXTS if ext in files), None)
    if data is None:
        return None, "no_image"
    image, outcome = decode_image(data, rules.max_pixels)
    if image is None:
        return None, outcome
    if min(image.size) < rules.min_side:
        return None, "too_small"
    outcome = "kept"
    if rules.resize_to and min(image.size) > rules.resize_to:
        image, outcome = resize_short_side(image, rules.resize_to), "resized"
    record = {"key": key, "width": image.width, "height": image.height, "jpg": image, "caption": caption}
    return record, outcome


def convert_part(tar: str, part_dir: str, rules: Rules) -> Counter:
    """One download shard into one MDS directory (in a worker forked after the slow streaming/torchvision imports
    above); returns counts of kept/resized/skip reasons."""
    counts: Counter = Counter()
    with MDSWriter(out=part_dir, columns=COLUMNS, compression=None, size_limit=SIZE_LIMIT) as writer:
        for key, files in read_shard(tar, counts):  # counts and logs duplicate keys itself
            record, outcome = convert_sample(key, files, rules)
            counts[outcome] += 1
            if record is None:
                log_skip = log.debug if outcome == "too_small" else log.warning
                log_skip("%s: sample %s skipped: %s", tar, key, outcome)
                continue
            writer.write(record)
    return counts


def summarize(counts: Counter, num_tars: int, rules: Rules) -> dict:
    return {"input_shards": num_tars, "kept": counts["kept"] + counts["resized"], "resized": counts["resized"],
            "skipped": {reason: counts[reason] for reason in SKIP_REASONS}, "rules": asdict(rules)}


def convert(in_dir: str | os.PathLike, out_dir: str | os.PathLike, rules: Rules = Rules(), workers: int = 1) -> dict:
    tars = [str(t) for t in list_shards(in_dir)]
    out = Path(out_dir)
    if out.exists():
        raise UserError(f"{out}: already exists; remove it to convert again")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an interrupted run
    # one MDS part per download shard, named by it and merged in shard order: the dataset (its sample order and
    # shard files, hence the precompute units and their seeds) does not depend on how many workers there were, nor
    # on how many parts the download was split into (a part's shards keep their ids)
    parts = [tmp / Path(tar).stem for tar in tars]
    try:
        if workers <= 1 or len(tars) <= 1:
            results = [convert_part(tar, str(part), rules)
                       for tar, part in progress(list(zip(tars, parts)), desc="convert", unit="shard")]
        else:
            with ProcessPoolExecutor(min(workers, len(tars))) as pool:
                results = list(progress(pool.map(convert_part, tars, map(str, parts), [rules] * len(tars)),
                                        total=len(tars), desc="convert", unit="shard"))
        merge_parts(tmp, parts)
        stats = {**summarize(sum(results, Counter()), len(tars), rules), "provenance": provenance()}
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # each skip is logged where it happens, except the expected size filter's (debug level): its count is here
    skipped = stats["skipped"]
    log.info("%s: kept %d of %d samples; skipped: %s", out, stats["kept"], stats["kept"] + sum(skipped.values()),
             ", ".join(f"{reason} {n}" for reason, n in skipped.items()))
    return stats
