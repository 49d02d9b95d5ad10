"""The tiny preset's own CLIP: a small open_clip model trained contrastively on the preset's images and captions, so
that its evaluation has a CLIP score with no model hub involved (no package ships CLIP weights).

It trains on each image at every resolution the stages are evaluated at, as a sample of that size reaches the
scorer (resized down, then up to the model's input by open_clip's own preprocessing). Saved as an open_clip
`local-dir:` folder (open_clip_config.json + open_clip_model.safetensors), which `clip-score --model` loads like a
hub model. Trained for 150 steps on the demo's 512 images (20 s on 2 cores), it scores the held-out reference
images 89 against their captions and 21 against deranged ones.
"""
import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from microdit.arguments import positive_int
from microdit.data.mds import iter_samples, missing_columns, shard_readers
from microdit.errors import UserError
from microdit.files import atomic_folder

CONTEXT_LENGTH = 32  # tokens: the drawn captions take at most 16


def tiny_clip_config(image_size: int) -> dict:
    """open_clip's model_cfg: a 2-layer ViT on 8 px patches and a 2-layer text transformer, 64 wide (~3.4 M
    parameters, most of them the 49,408-token embedding of open_clip's tokenizer)."""
    return {"embed_dim": 64,
            "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 2,
                         "layers": 2}}


def load_pairs(mds_dir: str | os.PathLike, resolutions: list[int], preprocess, limit: int | None = None):
    """(images as the model takes them, captions): each image once per resolution, resized as its samples are."""
    from microdit.eval.reference_stats import center_crop

    missing, found = missing_columns(mds_dir, ["jpg", "caption"])
    if missing:
        raise UserError(f"{mds_dir}: no {' or '.join(missing)} column (it has {', '.join(found)}); expected images "
                        "with captions, as `microdit convert` writes them")
    images, captions = [], []
    samples = (sample for reader in shard_readers(mds_dir) for sample in iter_samples(reader))
    for sample in itertools.islice(samples, limit):
        pixels = np.asarray(sample["jpg"].convert("RGB"))
        for resolution in resolutions:
            images.append(preprocess(Image.fromarray(center_crop(resolution)(pixels))))
            captions.append(sample["caption"])
    if not captions:
        raise UserError(f"{mds_dir}: no images to train the CLIP model on")
    return torch.stack(images), captions


def train_tiny_clip(model, images: torch.Tensor, tokens: torch.Tensor, steps: int, batch_size: int, lr: float,
                    seed: int, log=print) -> dict:
    """AdamW on open_clip's contrastive loss, one-cycle learning rate, batches drawn without replacement."""
    from open_clip import ClipLoss

    from microdit.tiny_vae import fit

    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)

    def loss_at(step: int) -> torch.Tensor:
        batch = torch.randperm(len(images), generator=generator)[:batch_size]
        return loss_fn(*model(images[batch], tokens[batch]))

    model.train()
    final_loss = fit(loss_at, steps, optimizer, schedule, "clip", log)
    model.eval()
    return {"steps": steps, "final_loss": final_loss, "pairs": len(images)}


def run(args) -> None:
    import open_clip
    from safetensors.torch import save_file

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out}: exists; remove it to retrain the CLIP model")
    resolutions = sorted(args.resolutions)
    config = tiny_clip_config(resolutions[-1])
    torch.manual_seed(args.seed)
    model = open_clip.CLIP(**config)
    preprocess = open_clip.image_transform(config["vision_cfg"]["image_size"], is_train=False)
    images, captions = load_pairs(args.input, resolutions, preprocess, args.max_images)
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=CONTEXT_LENGTH)(captions)
    stats = train_tiny_clip(model, images, tokens, args.steps, args.batch_size, args.lr, args.seed)

    def fill(staging: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, staging / "open_clip_model.safetensors")
        # open_clip's default preprocessing (OpenAI's mean and std, bicubic resize) is what it trained with
        (staging / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}, indent=2))
        (staging / "train_stats.json").write_text(json.dumps(stats, indent=2))

    atomic_folder(out, fill)
    print(json.dumps(stats))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-clip", help="train the tiny preset's CLIP model (for its CLIP score) on an MDS image dataset",
        description="Trains a small open_clip model contrastively on an MDS dataset's images and captions and "
                    "saves it as a folder that `clip-score --model local-dir:<folder>` loads.")
    p.add_argument("--input", required=True, help="MDS image dataset with captions (from `microdit convert`)")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--resolutions", type=positive_int, nargs="+", default=[64],
                   help="sizes the scored images come in, each image trained on at each (default 64)")
    p.add_argument("--steps", type=positive_int, default=150, help="optimizer steps (default 150)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="pairs per step (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    p.add_argument("--max-images", type=positive_int, default=4096, help="images read from the dataset (default 4096)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the batches (default 0)")
    p.set_defaults(func=run)
