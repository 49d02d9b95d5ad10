"""`microdit score-shapes`: the drawn-shapes scorer (microdit/eval/shapes.py) over generated samples, over the
reference images of their captions (the ceiling of the data), or over those images' VAE reconstructions (the
ceiling the VAE leaves), written as a GenEval-shaped summary JSON and one JSON line per image."""
import json
from pathlib import Path

import numpy as np

from microdit.arguments import positive_int
from microdit.errors import UserError
from microdit.files import read_json, write_json, write_jsonl

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score-shapes", help="GenEval-style accuracy of drawn-shapes images against their captions",
        description="Finds the background and each caption group's shapes by colour in every image and reports the "
                    "accuracy of background colour, colour, shape, count and relative position (tiny preset).")
    p.add_argument("--captions", required=True, help="caption JSONL from eval-captions")
    images = p.add_mutually_exclusive_group(required=True)
    images.add_argument("--samples", help="directory written by generate: <index>.png per caption")
    images.add_argument("--reference", help="the captions' download (webdataset shards): their images by image_id")
    p.add_argument("--vae", help="with --reference: score the images' reconstructions through this VAE directory")
    p.add_argument("--resolution", type=positive_int, default=64,
                   help="with --reference: short side the images are resized to, as convert does (default 64)")
    p.add_argument("--out", required=True, help="summary JSON to write")
    p.add_argument("--results", help="JSONL to write: each image's verdict and what was detected")
    p.set_defaults(func=run)


def run(args) -> None:
    from microdit.eval.captions import read_caption_file
    from microdit.eval.shapes import score_image, summarize

    if args.vae and not args.reference:
        raise UserError("--vae: reconstructs the reference images; pass --reference too")
    rows = read_caption_file(args.captions)
    if args.samples:
        images, scored = sample_images(args.samples, rows), {"kind": "samples", "samples": args.samples}
    else:
        images = reference_images(args.reference, rows, args.captions, args.resolution)
        scored = {"kind": "reference", "reference": args.reference, "resolution": args.resolution}
        if args.vae:
            images, scored = reconstructions(images, args.vae), {**scored, "kind": "vae", "vae": args.vae}
    results = []
    for row, image in zip(rows, images):
        result = score_image(row["caption"], image)
        if result is None:
            raise UserError(f"{args.captions}: caption {row['index']} is not a drawn-shapes caption "
                            f"({row['caption'][:80]!r}); score-shapes scores the synthetic source only")
        results.append({"index": row["index"], **result})
    summary = {**summarize(results, args.results), "scored": scored, "captions": args.captions}
    if args.samples:
        manifest = Path(args.samples) / "generation.json"
        if manifest.is_file():
            summary["generation"] = read_json(manifest, "generation manifest")
    if args.results:
        write_jsonl(results, args.results)
    write_json(summary, args.out)
    print(json.dumps({"overall": summary["overall"], **{k: v["accuracy"] for k, v in summary["tasks"].items()},
                      "out": args.out}))


def sample_images(folder: str, rows: list[dict]):
    from PIL import Image

    from microdit.eval.generate import image_name

    paths = [Path(folder) / image_name(r["index"]) for r in rows]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise UserError(f"{folder}: {len(absent)} images missing (first {absent[0]}); rerun generate")
    for path in paths:
        with Image.open(path) as image:
            yield np.asarray(image.convert("RGB"))


def reference_images(shards: str, rows: list[dict], captions: str, resolution: int) -> list[np.ndarray]:
    """The captions' images from the download, short side resized to `resolution` as convert does."""
    from microdit.data.convert import resize_short_side
    from microdit.data.images import decode_image
    from microdit.data.shards import IMAGE_EXTS, finished_shards, read_shard, tar_path

    if any("image_id" not in r for r in rows):
        raise UserError(f"{captions}: --reference needs the 'image_id' of every line (eval-captions writes it)")
    wanted = {r["image_id"] for r in rows}
    found = {}
    for shard_id in sorted(finished_shards(shards)):
        for key, files in read_shard(tar_path(shards, shard_id)):
            data = next((files[ext] for ext in IMAGE_EXTS if ext in files), None)
            if key in wanted and data is not None:
                image, reason = decode_image(data)
                if image is None:
                    raise UserError(f"{shards}: image {key} cannot be scored ({reason})")
                if min(image.size) > resolution:
                    image = resize_short_side(image, resolution)
                found[key] = np.asarray(image)
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"{shards}: {len(missing)} of the captions' images are not in the download "
                        f"(first {missing[0]})")
    return [found[r["image_id"]] for r in rows]


def reconstructions(images: list[np.ndarray], vae_dir: str):
    """Each image through the VAE's encoder (posterior mean) and decoder, at its own size: padded by its edge
    pixels to a multiple of the VAE's downsampling, cropped back after."""
    import torch
    import torch.nn.functional as F

    from microdit.models.encoders import VAE

    vae = VAE(vae_dir)
    factor = vae.downsample
    for image in images:
        height, width = image.shape[:2]
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1,3,H,W) in [-1, 1]
        x = F.pad(x, (0, -width % factor, 0, -height % factor), mode="replicate")  # (1,3,H',W')
        with torch.no_grad():
            decoded = vae.vae.decode(vae.vae.encode(x).latent_dist.mode()).sample  # (1,3,H',W')
        pixels = ((decoded[0, :, :height, :width].clamp(-1, 1) + 1) * 127.5).round().byte()  # (3,H,W)
        yield pixels.permute(1, 2, 0).numpy()
