"""`microdit download | convert | precompute | merge-parts`: the data steps, each with explicit input and output
paths. Each prints a JSON summary on stdout; logs go to stderr."""
import json
import logging
from pathlib import Path

from microdit.arguments import positive_int
from microdit.data.images import add_max_pixels
from microdit.data.sources import SOURCES, load_source
from microdit.data.sources.common import SUBSETS
from microdit.errors import UserError
from microdit.files import claim_folder, fingerprint, write_json
from microdit.store import SPEED_OPTIONS
from microdit.provenance import provenance


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _print(summary: dict) -> int:
    print(json.dumps(summary, indent=1, default=str))
    return 0


# download options that say how fast or from which (expiring) links the data comes, not what it is: changing them
# resumes a download; any other option changed makes its finished shards someone else's (claim_folder)
NOT_IN_DATA = ("out", "summary", "func", *SPEED_OPTIONS)


def run_download(args) -> int:
    _setup_logging()
    if not 0 <= args.part < args.parts:
        raise UserError(f"--part {args.part} --parts {args.parts}: expected 0 <= part < parts")
    settings = {key: value for key, value in vars(args).items() if key not in NOT_IN_DATA}
    stale = claim_folder(args.out, fingerprint(settings))
    if stale is not None:
        logging.warning("%s: its shards were downloaded with other options; moved to %s", args.out, stale)
    summary = {**load_source(args.source).download(args), "provenance": provenance()}
    if args.summary:
        write_json(summary, args.summary)
    return _print(summary)


def run_convert(args) -> int:
    from microdit.data.convert import Rules, convert

    _setup_logging()
    rules = Rules(min_side=args.min_side, resize_to=args.resize_to, clean_captions=args.clean_captions,
                  max_pixels=args.max_pixels)
    return _print(convert(args.input, args.out, rules, workers=args.workers))


def run_precompute(args) -> int:
    from microdit.data.precompute import Config, precompute

    _setup_logging()
    config = Config(vae=args.vae, vae_subfolder=args.vae_subfolder, text_encoder=args.text_encoder,
                    resolutions=tuple(args.resolutions), batch_size=args.batch_size, seed=args.seed,
                    max_length=args.max_length, image_column=args.image_column, caption_column=args.caption_column)
    return _print(precompute(args.input, args.out, config, processes=args.processes, device=args.device))


def run_merge_parts(args) -> int:
    from microdit.data.mds import count, merge_parts, read_index

    _setup_logging()
    root = Path(args.out).resolve()
    for part in args.parts:
        read_index(part)  # a part missing or unfinished: one line naming it
        if Path(part).resolve().parent != root:
            raise UserError(f"{part}: not a folder directly inside --out {args.out} (the merged index names each "
                            f"shard by its part's folder)")
    merge_parts(args.out, args.parts)
    return _print({"parts": len(args.parts), "samples": count(args.out)})


def add_download(subparsers) -> None:
    parser = subparsers.add_parser("download", help="fetch a dataset into img2dataset-layout shards (resumable)")
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name in SOURCES:
        source = load_source(name)
        # no abbreviations: an option named "ou" in a workflow config would otherwise be a second --out
        sub = sources.add_parser(name, help=source.HELP, description=source.__doc__, allow_abbrev=False)
        sub.add_argument("--out", required=True, help="output directory (NNNNN.tar + NNNNN_stats.json)")
        sub.add_argument("--subset", choices=sorted(SUBSETS), default="full", help="small = the first ~1%%")
        sub.add_argument("--summary", help="also write the JSON summary here, once the download is complete")
        sub.add_argument("--part", type=int, default=0, help="which part of the source's shards (from 0)")
        sub.add_argument("--parts", type=positive_int, default=1,
                         help="split the shards into this many contiguous parts, each its own download")
        source.add_arguments(sub)
        sub.set_defaults(func=run_download)


def add_convert(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="filter + resize download shards into an MDS image dataset")
    parser.add_argument("--input", required=True, help="download directory (img2dataset webdataset layout)")
    parser.add_argument("--out", required=True, help="MDS directory to create (must not exist)")
    parser.add_argument("--min-side", type=int, default=256, help="skip images whose short side is smaller "
                        "(512 for the min-res-512 split, 0 to keep all)")
    parser.add_argument("--resize-to", type=int, default=512, help="resize the short side to this when larger "
                        "(0 = never)")
    parser.add_argument("--clean-captions", action="store_true", help="strip markup/URLs from alt-text (cc12m)")
    add_max_pixels(parser)
    parser.add_argument("--workers", type=int, default=1, help="writer processes")
    parser.set_defaults(func=run_convert)


def add_precompute(subparsers) -> None:
    parser = subparsers.add_parser("precompute", help="VAE and text latents of an MDS image dataset (restartable)")
    parser.add_argument("--input", required=True, help="MDS image dataset (from convert)")
    parser.add_argument("--out", required=True, help="MDS latents directory (finished parts are kept on rerun)")
    parser.add_argument("--vae", required=True, help="diffusers AutoencoderKL directory or hub id (4 or 16 channels)")
    parser.add_argument("--vae-subfolder", default=None, help="e.g. 'vae' for a full pipeline repository")
    parser.add_argument("--text-encoder", required=True, help="'minilm', 'openclip:<name>', 'hf:<dir or id>'")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512],
                        help="image sizes to encode, one latents_<size> column each (default 256 512)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per VAE batch (default 32)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the VAE posterior's samples "
                        "(default 2024)")
    parser.add_argument("--max-length", type=int, default=77, help="caption tokens (transformers encoders)")
    parser.add_argument("--image-column", default="jpg", help="the input's image column (default jpg)")
    parser.add_argument("--caption-column", default="caption", help="its caption column (default caption)")
    parser.add_argument("--processes", type=int, default=1, help="one per GPU; each writes its own parts")
    parser.add_argument("--device", default=None, help="single-process device (default: cuda if available)")
    parser.set_defaults(func=run_precompute)


def add_merge_parts(subparsers) -> None:
    parser = subparsers.add_parser("merge-parts", help="the MDS datasets in a folder's sub-folders as one dataset")
    parser.add_argument("--out", required=True, help="the folder holding the parts; gets index.json")
    parser.add_argument("parts", nargs="+", help="the parts' folders, in the order their samples are read")
    parser.set_defaults(func=run_merge_parts)


def register(subparsers) -> None:
    add_download(subparsers)
    add_convert(subparsers)
    add_precompute(subparsers)
    add_merge_parts(subparsers)
