"""Conceptual 12M. Default route: img2dataset from the URL/caption list (cc12m.tsv, or a parquet of it), which
writes our layout natively and resumes through its incremental mode. Alternative route: the webdataset tars the
authors used (`pixparse/cc12m-wds` on the hub), copied shard by shard. Captions are cleaned later by
`microdit convert --clean-captions`, as the reference does for this dataset only."""
import json
import logging
import os
from pathlib import Path

from microdit.files import atomic_write
from microdit.data.shards import STATS_SUFFIX, read_shard, tar_path, write_stats
from microdit.arguments import positive_int
from microdit.data.sources.common import check_parts, run_shards, select_part, select_subset
from microdit.errors import UserError
from microdit.store import part_range

log = logging.getLogger(__name__)

HELP = "Conceptual 12M (img2dataset from a URL list, or the pixparse/cc12m-wds hub tars)"
HUB_REPO = "pixparse/cc12m-wds"
HUB_SHARDS = 2176  # cc12m-train-0000.tar .. cc12m-train-2175.tar
HUB_SMALL_SHARDS = 23  # the reference's small subset: ids 0..22 (SPEC §4.2), one more than the generic 1 %
PART_LIST = "_part_urls.parquet"  # the rows of this part (or subset), when not the whole list
IMG2DATASET_FOLDER = "_img2dataset"  # where img2dataset writes and resumes


def add_arguments(parser) -> None:
    parser.add_argument("--route", choices=("img2dataset", "hub"), default="img2dataset",
                        help="img2dataset: fetch the URL list's images; hub: the pixparse/cc12m-wds tars")
    parser.add_argument("--url-list", help="img2dataset route: URL/caption list (.parquet, or .tsv/.csv with header)")
    parser.add_argument("--url-col", default="url", help="the URL list's URL column (default url)")
    parser.add_argument("--caption-col", default="caption", help="its caption column (default caption)")
    parser.add_argument("--processes", type=int, default=16, help="img2dataset processes (default 16)")
    parser.add_argument("--threads", type=int, default=64, help="img2dataset threads per process (default 64)")
    parser.add_argument("--shard-size", type=positive_int, default=10000, help="samples per tar (img2dataset route)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per image request")
    parser.add_argument("--retries", type=int, default=0, help="img2dataset retries per image (default 0)")


def input_format(url_list: str) -> str:
    suffix = Path(url_list).suffix.lower().lstrip(".")
    if suffix not in ("parquet", "tsv", "csv"):
        raise UserError(f"{url_list}: expected a .parquet, .tsv or .csv URL list")
    return suffix


def read_url_list(url_list: str, url_col: str, caption_col: str):
    import pandas as pd

    fmt = input_format(url_list)
    try:
        if fmt == "parquet":
            table = pd.read_parquet(url_list)
        else:
            table = pd.read_csv(url_list, sep="\t" if fmt == "tsv" else ",")
    except (OSError, ValueError) as err:
        raise UserError(f"{url_list}: unreadable URL list ({err})") from None
    missing = [c for c in (url_col, caption_col) if c not in table.columns]
    if missing:
        raise UserError(f"{url_list}: missing column(s) {missing}; has {list(table.columns)}")
    return table[[url_col, caption_col]]


def part_url_list(args, out: Path) -> tuple[str, int]:
    """(the list img2dataset should read, the global id of its first shard). The user's file itself for a whole
    "full" download; else the rows of this part's shards (img2dataset cuts the subset's rows, the first ~1% for
    "small", into shards of --shard-size; `--parts` takes whole shards of those) as a parquet, written only when
    missing, so a resumed run sees the same rows and shard numbering."""
    if args.subset == "full" and args.parts == 1:
        return args.url_list, 0
    table = read_url_list(args.url_list, args.url_col, args.caption_col)
    rows = select_subset(list(range(len(table))), args.subset)
    shards = part_range(check_parts(-(-len(rows) // args.shard_size), args), args.part, args.parts)
    path = out / PART_LIST
    if not path.is_file():
        part = rows[shards.start * args.shard_size:shards.stop * args.shard_size]
        atomic_write(path, lambda tmp: table.iloc[part].to_parquet(tmp, index=False))
    return str(path), shards.start


def link_shards(staging: Path, out: Path, first: int) -> None:
    """img2dataset numbers a part's shards from 0 in its own folder (where its incremental mode resumes them):
    each finished one is hard-linked into `out` under its global id, as the other sources number theirs."""
    for stats in sorted(staging.glob(f"*{STATS_SUFFIX}")):
        local = int(stats.name[: -len(STATS_SUFFIX)])
        for source, target in ((tar_path(staging, local), tar_path(out, first + local)),
                               (stats, out / f"{first + local:05d}{STATS_SUFFIX}")):
            if source.is_file() and not target.exists():
                os.link(source, target)


def download_img2dataset(args) -> dict:
    from img2dataset import download as img2dataset_download

    if not args.url_list or not os.path.isfile(args.url_list):
        raise UserError(f"--url-list {args.url_list!r}: no such file (the img2dataset route needs the cc12m list)")
    out = Path(args.out)
    staging = out / IMG2DATASET_FOLDER
    staging.mkdir(parents=True, exist_ok=True)
    url_list, first = part_url_list(args, out)
    # resize_mode "no": the SPEC §4.1 size filter and bicubic resize happen once, in `microdit convert`.
    img2dataset_download(
        url_list=url_list, output_folder=str(staging), input_format=input_format(url_list), url_col=args.url_col,
        caption_col=args.caption_col, output_format="webdataset", resize_mode="no", encode_format="jpg",
        processes_count=args.processes, thread_count=args.threads, number_sample_per_shard=args.shard_size,
        timeout=args.timeout, retries=args.retries, incremental_mode="incremental", enable_wandb=False)
    link_shards(staging, out, first)
    return summarize_img2dataset(out)


def summarize_img2dataset(out: Path) -> dict:
    """Totals over img2dataset's per-shard stats files."""
    totals = {"shards": 0, "count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    for path in sorted(out.glob(f"*{STATS_SUFFIX}")):
        stats = json.loads(path.read_text())
        totals["shards"] += 1
        for key in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[key] += int(stats.get(key, 0))
    return totals


def hub_shard(out: Path, shard_id: int) -> dict:
    from microdit.data.sources.fetch import hub_download

    path = hub_download(HUB_REPO, f"cc12m-train-{shard_id:04d}.tar", out / "_hub")
    os.replace(path, tar_path(out, shard_id))
    skipped: dict[str, int] = {}
    count = sum(1 for _ in read_shard(tar_path(out, shard_id), skipped))
    return write_stats(out, shard_id, count, skipped)


def download(args) -> dict:
    if args.route == "img2dataset":
        return download_img2dataset(args)
    out = Path(args.out)
    shard_ids = select_part(list(range(HUB_SMALL_SHARDS if args.subset == "small" else HUB_SHARDS)), args)
    return run_shards(out, shard_ids, lambda i: hub_shard(out, i))
