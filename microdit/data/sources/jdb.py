"""JourneyDB (gated: accept the terms on the hub and export HF_TOKEN). Captions are the Midjourney `prompt` of the
*_repath.jsonl annotations. One shard per image archive data/<split>/imgs/NNN.tgz.

Fixes the reference's validation bug: it requested the train id list (0..199) for the valid split too and failed on
archives that do not exist; here the archive ids come from the repo listing of the chosen split."""
import json
import re
import tarfile
from pathlib import Path

from microdit.data.sources.common import (iter_tar_images, run_shards, select_part, select_subset,
                                          write_paired_shard)
from microdit.errors import UserError

HELP = "JourneyDB (gated, needs HF_TOKEN), Midjourney prompt as caption; --split train or valid"
REPO = "JourneyDB/JourneyDB"
ANNOTATIONS = {"train": "data/train/train_anno_realease_repath.jsonl.tgz",
               "valid": "data/valid/valid_anno_repath.jsonl.tgz"}


def add_arguments(parser) -> None:
    parser.add_argument("--split", choices=sorted(ANNOTATIONS), default="train", help="which split (default train)")


def archive_name(split: str, archive_id: int) -> str:
    return f"data/{split}/imgs/{archive_id:03d}.tgz"


def archive_ids(repo_files: list[str], split: str) -> list[int]:
    """The image archive ids that exist for this split, sorted."""
    pattern = re.compile(rf"data/{split}/imgs/(\d+)\.tgz")
    return sorted(int(m.group(1)) for m in map(pattern.fullmatch, repo_files) if m)


def load_prompts(annotations_tgz: str | Path) -> dict[str, str]:
    """image stem -> prompt from the (gzipped tar of a) jsonl annotation file."""
    prompts = {}
    with tarfile.open(annotations_tgz) as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jsonl")):
                continue
            for number, line in enumerate(tar.extractfile(member), 1):
                try:
                    row = json.loads(line)
                    stem, prompt = Path(row["img_path"]).stem, row["prompt"]
                except (ValueError, KeyError, TypeError) as err:
                    raise UserError(f"{annotations_tgz}:{member.name}:{number}: bad annotation ({err})") from None
                if isinstance(prompt, str) and prompt.strip():
                    prompts[stem] = prompt.strip()
    if not prompts:
        raise UserError(f"{annotations_tgz}: no annotations with an img_path and a prompt")
    return prompts


def download(args) -> dict:
    from microdit.data.sources.fetch import hub_download, hub_files, hub_token

    hub_token(required=True)
    out = Path(args.out)
    ids = select_subset(archive_ids(hub_files(REPO, token_required=True), args.split), args.subset)
    ids = select_part(ids, args)
    prompts = load_prompts(hub_download(REPO, ANNOTATIONS[args.split], out / "_hub", token_required=True))

    def make_shard(archive_id: int) -> dict:
        path = hub_download(REPO, archive_name(args.split, archive_id), out / "_hub", token_required=True)
        with open(path, "rb") as f:
            stats = write_paired_shard(out, archive_id, iter_tar_images(f, str(path)), prompts.get)
        path.unlink()
        return stats

    return run_shards(out, ids, make_shard)
