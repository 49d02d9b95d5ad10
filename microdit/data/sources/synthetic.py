"""Offline procedural shapes with compositional captions (microdit.data.synthetic), in the img2dataset layout."""
from microdit.data.shards import Sample, write_shard
from microdit.data.sources.common import run_shards, select_part, select_subset
from microdit.data.synthetic import render
from microdit.errors import UserError

HELP = "procedurally drawn shapes with matching captions (offline, deterministic from --seed)"


def add_arguments(parser) -> None:
    parser.add_argument("--num-samples", type=int, default=1000, help="images to draw (default 1000)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per tar")
    parser.add_argument("--seed", type=int, default=0, help="sample i of a seed is always the same image "
                        "(default 0)")
    parser.add_argument("--min-size", type=int, default=64, help="smallest image side in pixels")
    parser.add_argument("--max-size", type=int, default=256, help="largest image side in pixels")


def shard_samples(shard_id: int, shard_size: int, num_samples: int, seed: int, min_size: int, max_size: int):
    for index in range(shard_id * shard_size, min((shard_id + 1) * shard_size, num_samples)):
        image, caption, meta = render(index, seed, min_size, max_size)
        yield Sample(key=f"{index:09d}", image=image, caption=caption, meta=meta)


def download(args) -> dict:
    if args.num_samples < 1 or args.shard_size < 1 or not 8 <= args.min_size <= args.max_size:
        raise UserError("synthetic: need --num-samples >= 1, --shard-size >= 1 and 8 <= --min-size <= --max-size")
    num_shards = -(-args.num_samples // args.shard_size)
    shard_ids = select_part(select_subset(list(range(num_shards)), args.subset), args)
    return run_shards(args.out, shard_ids, lambda i: write_shard(args.out, i, shard_samples(
        i, args.shard_size, args.num_samples, args.seed, args.min_size, args.max_size)))
