"""`microdit eval-captions | generate | merge-samples | fid-stats | fid | clip-score | geneval-metadata |
geneval-generate | geneval-summary`: the evaluation steps, each with explicit input and output paths, as the
Snakemake rules call them."""
import json
from pathlib import Path

from microdit.arguments import non_negative_float, positive_int
from microdit.data.images import add_max_pixels
from microdit.errors import UserError
from microdit.files import read_json, sha256_file, write_json, write_jsonl
from microdit.provenance import provenance

MANIFEST = "generation.json"
# manifest keys that say where files lie or how fast images were drawn, not what the images are (the batch size
# and compiling change which kernels round how, as another GPU would)
NOT_IN_IMAGES = ("checkpoint", "captions", "batch_size", "compile")
DRAWING_DEFAULTS = {"batch_size": None, "compile": "none"}


def register(subparsers) -> None:
    for add in (add_captions, add_generate, add_merge_samples, add_fid_stats, add_fid, add_clip_score,
                add_geneval_metadata, add_geneval_generate, add_geneval_summary):
        add(subparsers)


def add_sampling_args(p, shared_out: bool = True) -> None:
    """The options of drawing from a checkpoint; `shared_out`: the images are shared out in batches over ranks and
    parts (generate, geneval-generate), not one grid (sample)."""
    p.add_argument("--checkpoint", required=True, help="DiT weights: .pt (the authors' state_dict) or .safetensors")
    p.add_argument("--vae", help="AutoencoderKL id or directory (default: the one our exports record, else the "
                                 "paper's for the checkpoint's latent channels)")
    p.add_argument("--text-encoder", help="openclip:<name>, hf:<dir>, minilm (default: the one our exports record, "
                                          "else the paper's DFN5B CLIP-H)")
    p.add_argument("--resolution", type=positive_int, help="image size in pixels, checked against the model (files "
                                                           "without pos_embed: 512 unless given)")
    p.add_argument("--steps", type=positive_int, default=30, help="EDM Heun steps (default 30)")
    p.add_argument("--guidance", type=non_negative_float, default=5.0,
                   help="classifier-free guidance scale; 1 or less: none (default 5.0)")
    p.add_argument("--seed", type=int, default=2024, help="image i's noise is seeded by seed + i (default 2024)")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU, else CPU), cpu, cuda:1, ...")
    add_speed_args(p)
    if not shared_out:
        return
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="images per batch (image i's noise is its own: the batch size does not choose the images)")
    p.add_argument("--rank", type=int, help="this process's share (default: RANK, or SLURM_PROCID in an srun step, "
                                            "else 0)")
    p.add_argument("--world-size", type=positive_int,
                   help="number of processes (default: WORLD_SIZE, or SLURM_STEP_NUM_TASKS in an srun step, else 1)")
    p.add_argument("--part", type=int, default=0, help="draw only this part's images (whole batches), 0-based")
    p.add_argument("--parts", type=positive_int, default=1,
                   help="number of parts (jobs) the images are shared out in; merge-samples joins their folders")


def load_pipeline(args):
    """The pipeline of the sampling options, its image size checked against --resolution."""
    from microdit.sampling import pipeline_from_checkpoint

    latent_res = args.resolution // 8 if args.resolution else None  # only read for files without pos_embed
    model = pipeline_from_checkpoint(args.checkpoint, args.vae, args.text_encoder, latent_res, args.device,
                                     args.precision, args.compile)
    if args.resolution and args.resolution != model.resolution:
        raise UserError(f"--resolution {args.resolution}: {args.checkpoint} with this VAE generates "
                        f"{model.resolution} px")
    return model


def add_speed_args(p) -> None:
    from microdit.models.speed import COMPILE_MODES

    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the denoiser's precision: auto = bf16 autocast on a GPU, fp32 on the CPU")
    p.add_argument("--compile", choices=COMPILE_MODES, default="none",
                   help="torch.compile the denoiser: model or blocks (pays off over many batches of one shape)")


def add_feature_args(p) -> None:
    from microdit.eval.fid import FEATURES, MODES

    p.add_argument("--features", choices=FEATURES, default="inception",
                   help="inception (FID) or efficientnet-lite0 (offline Fréchet distance, not an FID)")
    p.add_argument("--mode", choices=MODES, default="clean", help="clean-fid resizing mode (default clean)")
    p.add_argument("--inception-weights", help="a local copy of clean-fid's Inception file, used when offline")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per feature batch (default 64)")


def add_captions(subparsers) -> None:
    p = subparsers.add_parser("eval-captions", help="seeded sample of N captions, one per image")
    p.add_argument("--source", required=True, help="webdataset shard directory (download coco2014) or COCO's "
                                                   "captions_val2014.json")
    p.add_argument("--out", required=True, help="caption JSONL to write")
    p.add_argument("--num", type=positive_int, required=True, help="number of captions (30000 in the paper preset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the caption sample (default 0)")
    p.add_argument("--shuffle", type=int, metavar="SEED",
                   help="the same sample with each caption moved to another image by a derangement of this seed "
                        "(the prompts of the shuffled-caption floor)")
    p.set_defaults(func=run_captions)


def run_captions(args) -> None:
    from microdit.eval.captions import derange, read_source_captions, sample_captions

    skipped: dict[str, int] = {}
    rows = sample_captions(read_source_captions(args.source, skipped), args.num, args.seed)
    if args.shuffle is not None:
        rows = derange(rows, args.shuffle)
    write_jsonl(rows, args.out)
    print(json.dumps({"captions": len(rows), "skipped": skipped, "out": args.out}))


def add_generate(subparsers) -> None:
    p = subparsers.add_parser("generate", help="one PNG per caption (resumable, split over ranks)")
    p.add_argument("--captions", required=True, help="caption JSONL from eval-captions")
    p.add_argument("--out", required=True, help="directory of <index>.png and generation.json")
    add_sampling_args(p)
    p.set_defaults(func=run_generate)


def load_sampler(args):
    """(pipeline, generation settings for the manifest, rank, world size)."""
    from microdit.checkpoint import weights_digest
    from microdit.eval.generate import distributed_rank
    from microdit.files import model_identity

    model = load_pipeline(args)
    settings = {"checkpoint": str(args.checkpoint), "checkpoint_sha256": weights_digest(args.checkpoint),
                "resolution": model.resolution, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                "batch_size": args.batch_size, "compile": args.compile, "sampler": "EDM Heun",
                "precision": model.precision,
                "vae": model.vae.name, "text_encoder": model.text_encoder.name,
                "models": {"vae": model_identity(model.vae.name),
                           "text_encoder": model_identity(model.text_encoder.name)}}
    rank, world_size = distributed_rank(args.rank, args.world_size)
    if args.parts > 1:  # a part's folder belongs to its share of the images
        settings["part"] = {"index": args.part, "of": args.parts}
    return model, settings, rank, world_size


def sampling_kwargs(settings: dict, rank: int, world_size: int, part: range) -> dict:
    return {"steps": settings["steps"], "guidance": settings["guidance"], "seed": settings["seed"],
            "batch_size": settings["batch_size"], "rank": rank, "world_size": world_size, "part": part}


def start_samples(out: Path, manifest: dict, rank: int) -> None:
    """Claim the output folder for what determines its images (the manifest less file locations and how they were
    drawn), then write the manifest: every rank writes the same one, so any rank may finish last. The runs before
    this one may have drawn some of the images under another batch size or compile setting: those settings are
    listed under `earlier_drawing_settings`, so that a score's provenance stays whole."""
    from microdit.eval.generate import claim_samples

    claim_samples(out, {k: v for k, v in manifest.items() if k not in NOT_IN_IMAGES}, rank)
    earlier = read_json(out / MANIFEST, "generation manifest") if (out / MANIFEST).is_file() else {}
    history = earlier.get("earlier_drawing_settings", [])
    previous = drawing_settings(earlier) if earlier else None
    # compared as drawing settings: entries of an earlier version may name one since dropped (cuda_graph)
    if previous not in (None, drawing_settings(manifest), *map(drawing_settings, history)):
        history = [*history, previous]
    write_json({**manifest, **({"earlier_drawing_settings": history} if history else {})}, out / MANIFEST)


def drawing_settings(manifest: dict) -> dict:
    """How a folder's images were drawn, not which they are; keys a manifest predates take their defaults (the
    settings they had before they could be chosen)."""
    return {key: manifest.get(key, default) for key, default in DRAWING_DEFAULTS.items()}


def run_generate(args) -> None:
    from microdit.eval.captions import read_caption_file
    from microdit.eval.generate import generate_images, image_name, part_range

    rows = read_caption_file(args.captions)
    part = part_range(len(rows), args.batch_size, args.part, args.parts)
    model, settings, rank, world_size = load_sampler(args)
    out = Path(args.out)
    start_samples(out, {**settings, "captions": str(args.captions), "captions_sha256": sha256_file(args.captions),
                        "num_images": len(rows)}, rank)
    stats = generate_images(model, [r["caption"] for r in rows], lambda i: out / image_name(i),
                            **sampling_kwargs(settings, rank, world_size, part))
    print(json.dumps({**stats, "rank": rank, "world_size": world_size, "out": str(out)}))


def add_merge_samples(subparsers) -> None:
    p = subparsers.add_parser("merge-samples", help="one folder of the images generate or geneval-generate drew in "
                                                    "parts (--part/--parts), for fid or GenEval")
    p.add_argument("--part", action="append", required=True, help="a part's folder, in part order (repeatable)")
    p.add_argument("--out", required=True, help="folder of all the images (linked) and their generation.json")
    p.set_defaults(func=run_merge_samples)


def run_merge_samples(args) -> None:
    from microdit.eval.generate import link_images

    parts = [Path(part) for part in args.part]
    merged = merged_manifest([read_json(part / MANIFEST, "generation manifest") for part in parts], parts)
    out = Path(args.out)
    start_samples(out, merged, rank=0)
    files = sum(link_images(part, out, skip=(MANIFEST,)) for part in parts)
    print(json.dumps({"files": files, "parts": len(parts), "out": str(out)}))


def merged_manifest(manifests: list[dict], parts: list[Path]) -> dict:
    """The manifest of all the parts' images: theirs less the part, once they are checked to be parts 0 .. P-1 of P
    of one drawing (the same settings); the earlier drawing settings of any part are kept."""
    for index, (manifest, part) in enumerate(zip(manifests, parts)):
        expected = {"index": index, "of": len(parts)} if len(parts) > 1 else None
        if manifest.get("part") != expected:
            raise UserError(f"{part / MANIFEST}: part {manifest.get('part')}, expected {expected} (--part names the "
                            "folders of one split, in order)")
    drawn = [{k: v for k, v in m.items() if k not in ("part", "earlier_drawing_settings")} for m in manifests]
    for settings, part in zip(drawn, parts):
        if settings != drawn[0]:
            raise UserError(f"{part / MANIFEST}: drawn with other settings than {parts[0] / MANIFEST}")
    history = []
    for entry in (entry for m in manifests for entry in m.get("earlier_drawing_settings", [])):
        history += [entry] if entry not in history else []
    return {**drawn[0], **({"earlier_drawing_settings": history} if history else {})}


def add_fid_stats(subparsers) -> None:
    p = subparsers.add_parser("fid-stats", help="reference feature statistics (.npz) for fid")
    p.add_argument("--images", required=True, help="directory of reference images or webdataset shards")
    p.add_argument("--out", required=True, help=".npz to write (in the results tree)")
    p.add_argument("--resolution", type=positive_int, required=True, help="center-crop size = the evaluation resolution")
    p.add_argument("--captions", help="caption JSONL: use only the images it names (default: all)")
    p.add_argument("--halves", help="also write the Fréchet distance between two random halves of the images "
                                    "(JSON): what two sets of real images score")
    add_max_pixels(p)
    add_feature_args(p)
    p.set_defaults(func=run_fid_stats)


def run_fid_stats(args) -> None:
    from microdit.eval.captions import read_caption_file
    from microdit.eval.fid import build_extractor
    from microdit.eval.reference_stats import compute_reference_stats
    from microdit.sampling import pick_device

    device = pick_device(args.device)
    keys = None
    if args.captions:
        rows = read_caption_file(args.captions)
        if any("image_id" not in row for row in rows):
            raise UserError(f"{args.captions}: fid-stats needs the 'image_id' of every line (eval-captions writes "
                            "it) to pick the reference images")
        keys = {row["image_id"] for row in rows}
    extractor = build_extractor(args.features, args.mode, device, args.inception_weights)
    meta = compute_reference_stats(args.images, args.out, extractor, args.mode, args.resolution, device,
                                   args.batch_size, keys, args.max_pixels, args.halves)
    print(json.dumps({**meta, "out": args.out}))


def add_fid(subparsers) -> None:
    p = subparsers.add_parser("fid", help="Fréchet distance of generated images -> fid.json")
    p.add_argument("--samples", required=True, help="directory written by generate (with generation.json)")
    p.add_argument("--reference-stats", required=True, help=".npz from fid-stats")
    p.add_argument("--out", required=True, help="fid.json to write")
    add_feature_args(p)
    p.set_defaults(func=run_fid)


def run_fid(args) -> None:
    from microdit.eval.fid import build_extractor, score_folder
    from microdit.sampling import pick_device

    manifest = read_json(Path(args.samples) / MANIFEST, "generation manifest")
    if "num_images" not in manifest:
        raise UserError(f"{Path(args.samples) / MANIFEST}: not written by `microdit generate` (no 'num_images'); "
                        "--samples takes the folder of a generate run")
    found = len(list(Path(args.samples).glob("*.png")))
    if found != manifest["num_images"]:
        raise UserError(f"{args.samples}: {found} of {manifest['num_images']} images written; rerun generate")
    device = pick_device(args.device)
    extractor = build_extractor(args.features, args.mode, device, args.inception_weights)
    value = score_folder(args.samples, args.reference_stats, extractor, args.mode, manifest["resolution"], device,
                         args.batch_size)
    result = {"metric": extractor.metric, "value": value, "mode": args.mode, "feature_extractor": extractor.name,
              "reference_stats": str(args.reference_stats), "samples": str(args.samples), **manifest,
              "provenance": provenance()}
    write_json(result, args.out)
    print(json.dumps({"metric": extractor.metric, "value": value, "out": args.out}, ensure_ascii=False))


def add_clip_score(subparsers) -> None:
    from microdit.eval.reference_images import add_scored_images_args

    p = subparsers.add_parser("clip-score", help="CLIP score of images vs their captions -> clip.json",
                              description="Mean CLIP score (100 x cosine, floored at 0) of each caption's image: "
                                          "generated samples, or the captions' own reference images.")
    add_scored_images_args(p)
    p.add_argument("--captions", required=True, help="the caption JSONL the images belong to")
    p.add_argument("--out", required=True, help="clip.json to write")
    p.add_argument("--model", default="ViT-L-14",
                   help="open_clip architecture, hf-hub:<repo>@<revision>, or local-dir:<folder> (train-clip's)")
    p.add_argument("--pretrained", default="openai",
                   help="open_clip weights tag; '' with a local-dir: model, or for random weights (tests)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per feature batch (default 64)")
    p.set_defaults(func=run_clip_score)


def run_clip_score(args) -> None:
    from microdit.eval.captions import read_caption_file
    from microdit.eval.clip_score import clip_score
    from microdit.eval.reference_images import scored_images
    from microdit.sampling import pick_device

    rows = read_caption_file(args.captions)
    images, scored = scored_images(args, rows)
    value = clip_score(images, [r["caption"] for r in rows], args.model, args.pretrained,
                       pick_device(args.device), args.batch_size)
    write_json({"metric": "CLIP score", "value": value, "model": args.model, "pretrained": args.pretrained or None,
                "num_images": len(rows), **scored, "captions": str(args.captions), "provenance": provenance()},
               args.out)
    print(json.dumps({"clip_score": value, "out": args.out}))


def add_geneval_metadata(subparsers) -> None:
    p = subparsers.add_parser("geneval-metadata", help="GenEval's evaluation_metadata.jsonl, pinned by sha256")
    p.add_argument("--out", required=True, help="evaluation_metadata.jsonl to write")
    p.add_argument("--source", help="a local copy to check and use instead of downloading")
    p.set_defaults(func=run_geneval_metadata)


def run_geneval_metadata(args) -> None:
    from microdit.eval.geneval import UPSTREAM_COMMIT, fetch_metadata

    print(json.dumps({"out": str(fetch_metadata(args.out, args.source)), "commit": UPSTREAM_COMMIT}))


def add_geneval_generate(subparsers) -> None:
    p = subparsers.add_parser("geneval-generate", help="images in GenEval's layout for its official evaluator")
    p.add_argument("--metadata", required=True, help="evaluation_metadata.jsonl (from geneval-metadata)")
    p.add_argument("--out", required=True, help="image directory: <5-digit>/metadata.jsonl, samples/<4-digit>.png")
    p.add_argument("--images-per-prompt", type=positive_int, default=4, help="GenEval's default: 4")
    p.add_argument("--num-prompts", type=positive_int, help="only the first N prompts (tiny preset); default all 553")
    add_sampling_args(p)
    p.set_defaults(func=run_geneval_generate)


def run_geneval_generate(args) -> None:
    from microdit.eval.geneval import generate_geneval, read_metadata

    from microdit.eval.generate import part_range

    metadata = read_metadata(args.metadata)[: args.num_prompts]
    part = part_range(len(metadata) * args.images_per_prompt, args.batch_size, args.part, args.parts)
    model, settings, rank, world_size = load_sampler(args)
    out = Path(args.out)
    # the manifest lies outside the numbered folders, where the evaluator does not look
    start_samples(out, {**settings, "metadata_sha256": sha256_file(args.metadata), "num_prompts": len(metadata),
                        "images_per_prompt": args.images_per_prompt}, rank)
    stats = generate_geneval(model, metadata, out, args.images_per_prompt,
                             **sampling_kwargs(settings, rank, world_size, part))
    print(json.dumps({**stats, "rank": rank, "world_size": world_size, "out": str(out)}))


def add_geneval_summary(subparsers) -> None:
    p = subparsers.add_parser("geneval-summary", help="per-task and overall scores from GenEval's results.jsonl")
    p.add_argument("--results", required=True, help="results.jsonl written by GenEval's evaluate_images.py")
    p.add_argument("--out", required=True, help="geneval.json to write")
    p.add_argument("--manifest", help="the generation.json of the images, copied into the summary")
    p.set_defaults(func=run_geneval_summary)


def run_geneval_summary(args) -> None:
    from microdit.eval.geneval import summarize

    summary = summarize(args.results)
    if args.manifest:
        manifest = read_json(args.manifest, "generation manifest")
        drawn = manifest.get("num_prompts", 0) * manifest.get("images_per_prompt", 0)
        if summary["num_images"] != drawn:
            # as `fid` refuses a partial image set: the scores of part of the images are not GenEval's
            raise UserError(f"{args.results}: scores {summary['num_images']} images, but {args.manifest} draws "
                            f"{drawn}; finish the generation and rerun GenEval's evaluator")
        summary["generation"] = manifest
    write_json({**summary, "provenance": provenance()}, args.out)
    print(json.dumps({"overall": summary["overall"], "out": args.out}))
