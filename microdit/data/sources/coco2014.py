"""COCO 2014 val (40,504 images), the first caption of each image in annotation order: the FID / validation set.
Not filtered or resized downstream (SPEC §4.1: convert with --min-side 0 --resize-to 0)."""
import json
import zipfile
from pathlib import Path

from microdit.arguments import positive_int
from microdit.data.sources.common import image_stem, run_shards, select_part, select_subset, write_paired_shard
from microdit.errors import UserError

HELP = "COCO 2014 val, first caption per image (evaluation set)"
IMAGES_URL = "http://images.cocodataset.org/zips/val2014.zip"
ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
CAPTIONS_MEMBER = "annotations/captions_val2014.json"


def add_arguments(parser) -> None:
    parser.add_argument("--shard-size", type=positive_int, default=5000, help="images per tar")


def first_captions(annotations: dict, source: str = "annotations") -> dict[str, str]:
    """image file stem -> its first caption in annotation order."""
    try:
        files = {image["id"]: Path(image["file_name"]).stem for image in annotations["images"]}
        captions: dict[str, str] = {}
        for row in annotations["annotations"]:
            stem = files[row["image_id"]]
            if stem not in captions and row["caption"].strip():
                captions[stem] = row["caption"].strip()
    except (KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{source}: not a COCO captions file (missing or bad field {err})") from None
    return captions


def image_shards(image_names: list[str], subset: str, shard_size: int) -> list[list[str]]:
    names = select_subset(sorted(image_names), subset)
    return [names[i:i + shard_size] for i in range(0, len(names), shard_size)]


def zip_images(images_zip: str | Path, names: list[str]):
    with zipfile.ZipFile(images_zip) as archive:
        for name in names:
            yield name, archive.read(name)


def download(args) -> dict:
    from microdit.data.sources.fetch import http_download

    out = Path(args.out)
    raw = out / "_raw"
    annotations_zip = http_download(ANNOTATIONS_URL, raw / "annotations_trainval2014.zip")
    with zipfile.ZipFile(annotations_zip) as archive:
        captions = first_captions(json.loads(archive.read(CAPTIONS_MEMBER)), f"{annotations_zip}:{CAPTIONS_MEMBER}")
    images_zip = http_download(IMAGES_URL, raw / "val2014.zip")
    with zipfile.ZipFile(images_zip) as archive:
        names = [n for n in archive.namelist() if image_stem(n)]
    shards = image_shards(names, args.subset, args.shard_size)
    return run_shards(out, select_part(list(range(len(shards))), args),
                      lambda i: write_paired_shard(out, i, zip_images(images_zip, shards[i]), captions.get))
