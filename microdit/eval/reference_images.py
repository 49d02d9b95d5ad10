"""`microdit reference-images`: the evaluation captions' own images as the Fréchet distance's reference statistics
see them (short side resized, centre-cropped to the resolution: reference_stats.center_crop), one PNG per caption
named by its index as `generate` names samples, or those images through a VAE. The folder reads like a samples
folder (a generation.json with `num_images` and `resolution`), so `microdit fid` scores the VAE's reconstructions
against the statistics and the report shows each sample beside its caption's reference image.

Also the images of a caption file read from the download by `image_id` and their VAE reconstructions, and the
images the scorers (clip-score, score-shapes) read: samples or those reference images.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from microdit.arguments import positive_int
from microdit.errors import UserError
from microdit.files import atomic_folder, sha256_file, write_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reference-images", help="the captions' reference images (or their VAE reconstructions), one PNG per caption",
        description="Writes the reference image of each evaluation caption, centre-cropped to the resolution as the "
                    "reference statistics are, as <index>.png with a generation.json, or with --vae its "
                    "reconstruction: `fid` scores that folder like a samples folder.")
    p.add_argument("--source", required=True, help="the captions' download (webdataset shards): images by image_id")
    p.add_argument("--captions", required=True, help="caption JSONL from eval-captions")
    p.add_argument("--resolution", type=positive_int, required=True, help="the evaluated resolution (px)")
    p.add_argument("--out", required=True, help="folder to write (replaced whole)")
    p.add_argument("--num", type=positive_int, help="only the first N captions' images (default: all)")
    p.add_argument("--vae", help="write the images' reconstructions through this VAE (directory or hub id)")
    p.add_argument("--device", default="auto", help="the VAE's device: auto (a GPU if there is one), cpu, cuda, ...")
    p.set_defaults(func=run)


def run(args) -> None:
    from microdit.eval.captions import read_caption_file
    from microdit.eval.generate import image_name
    from microdit.eval.reference_stats import center_crop

    rows = read_caption_file(args.captions)[: args.num]
    crop = center_crop(args.resolution)
    images = (crop(np.asarray(image)) for image in caption_images(args.source, rows, args.captions))
    manifest = {"kind": "reference images", "num_images": len(rows), "resolution": args.resolution,
                "source": args.source, "captions": args.captions, "captions_sha256": sha256_file(args.captions)}
    if args.vae:
        from microdit.sampling import pick_device

        images = reconstructions(images, args.vae, pick_device(args.device))
        manifest.update(kind="VAE reconstructions", vae=args.vae)

    def write(folder: Path) -> None:
        for row, image in zip(rows, images):
            Image.fromarray(image).save(folder / image_name(row["index"]))
        write_json(manifest, folder / "generation.json")

    atomic_folder(args.out, write, replace=True)  # a folder of other settings never mixes with the new images
    print(json.dumps({"images": len(rows), "kind": manifest["kind"], "out": args.out}))


def caption_images(shards: str, rows: list[dict], captions: str) -> list[Image.Image]:
    """The captions' images from their download (webdataset shards), by image_id, in caption order."""
    from microdit.data.images import decode_image
    from microdit.data.shards import IMAGE_EXTS, finished_shards, read_shard, tar_path

    if any("image_id" not in r for r in rows):
        raise UserError(f"{captions}: the reference images need the 'image_id' of every line (eval-captions "
                        "writes it)")
    wanted = {r["image_id"] for r in rows}
    found = {}
    for shard_id in sorted(finished_shards(shards)):
        for key, files in read_shard(tar_path(shards, shard_id)):
            data = next((files[ext] for ext in IMAGE_EXTS if ext in files), None)
            if key in wanted and data is not None:
                image, reason = decode_image(data)
                if image is None:
                    raise UserError(f"{shards}: image {key} cannot be used ({reason})")
                found[key] = image
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"{shards}: {len(missing)} of the captions' images are not in the download "
                        f"(first {missing[0]})")
    return [found[r["image_id"]] for r in rows]


def resized_caption_images(shards: str, rows: list[dict], captions: str, resolution: int) -> list[np.ndarray]:
    """The captions' images, short side resized to `resolution` as convert does (not cropped: a crop would cut off
    shapes that a drawn caption counts)."""
    from microdit.data.convert import resize_short_side

    return [np.asarray(resize_short_side(image, resolution) if min(image.size) > resolution else image)
            for image in caption_images(shards, rows, captions)]


def add_scored_images_args(p) -> None:
    """The images a scorer of caption-image pairs reads (clip-score, score-shapes): samples or reference images."""
    images = p.add_mutually_exclusive_group(required=True)
    images.add_argument("--samples", help="directory written by generate: <index>.png per caption")
    images.add_argument("--reference", help="the captions' download (webdataset shards): their images by image_id")
    p.add_argument("--resolution", type=positive_int, default=64,
                   help="with --reference: short side the images are resized to, as convert does (default 64)")


def scored_images(args, rows: list[dict]) -> tuple:
    """(each caption row's image as HxWx3 uint8, what they are for the score's JSON) of add_scored_images_args."""
    if args.samples:
        from microdit.eval.generate import generated_pixels

        return generated_pixels(args.samples, rows), {"kind": "samples", "samples": str(args.samples)}
    images = resized_caption_images(args.reference, rows, args.captions, args.resolution)
    return images, {"kind": "reference", "reference": str(args.reference), "resolution": args.resolution}


def reconstructions(images, vae_name: str, device="cpu"):
    """Each image (HxWx3 uint8) through the VAE's encoder (posterior mean) and decoder, at its own size: padded by
    its edge pixels to a multiple of the VAE's downsampling, cropped back after."""
    import torch
    import torch.nn.functional as F

    from microdit.models.encoders import VAE

    vae = VAE(vae_name).to(device)
    factor = vae.downsample
    for image in images:
        height, width = image.shape[:2]
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1,3,H,W) in [-1, 1]
        x = F.pad(x, (0, -width % factor, 0, -height % factor), mode="replicate").to(device)  # (1,3,H',W')
        with torch.no_grad():
            decoded = vae.vae.decode(vae.vae.encode(x.to(vae.vae.dtype)).latent_dist.mode()).sample  # (1,3,H',W')
        pixels = ((decoded[0, :, :height, :width].float().clamp(-1, 1) + 1) * 127.5).round().byte()  # (3,H,W)
        yield pixels.permute(1, 2, 0).cpu().numpy()
