"""Dataset sources. Each module has HELP, add_arguments(parser) and download(args) -> summary dict, and writes the
img2dataset webdataset layout (microdit.data.shards) into args.out, resuming at shard granularity; args.subset is
"full" or "small" (~1%, SPEC §4)."""
import importlib

SOURCES = ("cc12m", "sa1b", "textcaps", "jdb", "diffdb", "coco2014", "synthetic")


def load_source(name: str):
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return importlib.import_module(f"{__name__}.{name}")
