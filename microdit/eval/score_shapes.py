"""`microdit score-shapes`: the drawn-shapes scorer (microdit/eval/shapes.py) over generated samples, over the
reference images of their captions (the ceiling of the data), or over those images' VAE reconstructions (the
ceiling the VAE leaves), written as a GenEval-shaped summary JSON and one JSON line per image."""
import json
from pathlib import Path

from microdit.errors import UserError
from microdit.files import read_json, write_json, write_jsonl


def register(subparsers) -> None:
    from microdit.eval.reference_images import add_scored_images_args

    p = subparsers.add_parser(
        "score-shapes", help="GenEval-style accuracy of drawn-shapes images against their captions",
        description="Finds the background and each caption group's shapes by colour in every image and reports the "
                    "accuracy of background colour, colour, shape, count and relative position (tiny preset).")
    p.add_argument("--captions", required=True, help="caption JSONL from eval-captions")
    add_scored_images_args(p)
    p.add_argument("--vae", help="with --reference: score the images' reconstructions through this VAE directory")
    p.add_argument("--out", required=True, help="summary JSON to write")
    p.add_argument("--results", help="JSONL to write: each image's verdict and what was detected")
    p.set_defaults(func=run)


def run(args) -> None:
    from microdit.eval.captions import read_caption_file
    from microdit.eval.reference_images import reconstructions, scored_images
    from microdit.eval.shapes import score_image, summarize

    if args.vae and not args.reference:
        raise UserError("--vae: reconstructs the reference images; pass --reference too")
    rows = read_caption_file(args.captions)
    images, scored = scored_images(args, rows)
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

