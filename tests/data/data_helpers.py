"""Helpers shared by the data pipeline tests."""
import argparse
import io
import tarfile

from PIL import Image

from microdit.data.commands import register
from microdit.data.shards import Sample, write_shard


def jpeg_bytes(width: int, height: int, color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_tar(path, members, mode="w"):
    """A tar of `members` ({name: bytes}, or (name, bytes) pairs where a name repeats), in that order."""
    with tarfile.open(path, mode) as tar:
        for name, data in (members.items() if isinstance(members, dict) else members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_wds(out, samples: list[Sample], shard_id: int = 0):
    write_shard(out, shard_id, samples)
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    """Arguments for our commands, as `microdit` would parse them once registered."""
    parser = argparse.ArgumentParser(prog="microdit")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse(argv)
    return args.func(args)
