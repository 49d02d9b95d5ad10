"""DiffusionDB 2M-large, prompt as caption; rows whose image or prompt NSFW score exceeds the threshold (0.2, as the
reference) are dropped. One shard per part zip; images stay .webp, as the reference keeps them."""
from pathlib import Path

from microdit.data.sources.common import (iter_zip_images, run_shards, select_part, select_subset,
                                          write_paired_shard)
from microdit.errors import UserError

HELP = "DiffusionDB large (poloclub/diffusiondb), prompt as caption, NSFW-filtered"
REPO = "poloclub/diffusiondb"
METADATA = "metadata-large.parquet"
NUM_PARTS = 14000
PART_1_LAST = 10000  # parts 1..10000 live in diffusiondb-large-part-1/, the rest in part-2/


def add_arguments(parser) -> None:
    parser.add_argument("--safety-threshold", type=float, default=0.2,
                        help="drop rows whose image_nsfw or prompt_nsfw is above this")


def archive_name(part_id: int) -> str:
    folder = 1 if part_id <= PART_1_LAST else 2
    return f"diffusiondb-large-part-{folder}/part-{part_id:06d}.zip"


def safe_prompts(metadata_path: str | Path, threshold: float) -> tuple[dict[str, str], int]:
    """(image stem -> prompt for the rows under the threshold, number of rows dropped as NSFW)."""
    import pandas as pd

    columns = ["image_name", "prompt", "image_nsfw", "prompt_nsfw"]
    try:
        table = pd.read_parquet(metadata_path, columns=columns)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{metadata_path}: unreadable DiffusionDB metadata ({err})") from None
    safe = (table["image_nsfw"] <= threshold) & (table["prompt_nsfw"] <= threshold)
    kept = table[safe & table["prompt"].map(lambda p: isinstance(p, str) and bool(p.strip()))]
    prompts = {Path(name).stem: prompt.strip() for name, prompt in zip(kept["image_name"], kept["prompt"])}
    return prompts, int((~safe).sum())


def download(args) -> dict:
    from microdit.data.sources.fetch import hub_download

    out = Path(args.out)
    prompts, dropped = safe_prompts(hub_download(REPO, METADATA, out / "_hub"), args.safety_threshold)

    def make_shard(part_id: int) -> dict:
        path = hub_download(REPO, archive_name(part_id), out / "_hub")
        stats = write_paired_shard(out, part_id, iter_zip_images(path), prompts.get)
        path.unlink()
        return stats

    parts = select_part(select_subset(list(range(1, NUM_PARTS + 1)), args.subset), args)
    summary = run_shards(out, parts, make_shard)
    return {**summary, "metadata_rows_dropped_nsfw": dropped}
