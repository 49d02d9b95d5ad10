"""Dataset sources. Each module has HELP, add_arguments(parser) and download(args) -> summary dict, and writes the
img2dataset webdataset layout (microdit.data.shards) into args.out, resuming at shard granularity; args.subset is
"full" or "small" (~1%, SPEC §4)."""
import importlib

SOURCES = ("cc12m", "sa1b", "textcaps", "jdb", "diffdb", "coco2014", "synthetic")


def load_source(name: str):
    """The module of one of SOURCES (the download command's choices)."""
    return importlib.import_module(f"{__name__}.{name}")
