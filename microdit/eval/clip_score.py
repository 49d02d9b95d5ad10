"""CLIP score of images against their captions: mean over images of max(100 * cos(image, text), 0), the torchmetrics
definition. Needs CLIP weights: open_clip downloads them from the hub, or loads a `local-dir:` folder such as the
tiny preset's own CLIP (microdit/tiny_clip.py)."""
import itertools
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from microdit.errors import UserError


def load_clip(model_name: str, pretrained: str | None, device="cpu"):
    """An open_clip model by architecture and weights tag, `hf-hub:<repo>@<revision>` at that revision, or a
    `local-dir:<folder>` of open_clip_config.json and weights."""
    import open_clip

    from microdit.hub import open_clip_source

    try:
        source = open_clip_source(model_name)
        model, _, preprocess = open_clip.create_model_and_transforms(source, pretrained=pretrained or None)
        tokenizer = open_clip.get_tokenizer(source)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"CLIP {model_name} ({pretrained}) is not available: {str(err).splitlines()[0]}; "
                        "it needs the model hub or its cache") from None
    return model.eval().to(device), preprocess, tokenizer


@torch.no_grad()
def clip_score(images: Iterable[np.ndarray], captions: list[str], model_name: str = "ViT-L-14",
               pretrained: str | None = "openai", device="cpu", batch_size: int = 64) -> float:
    """`images`: HxWx3 uint8, one per caption in order, read lazily (30,000 of them at the paper's size)."""
    model, preprocess, tokenizer = load_clip(model_name, pretrained, device)
    images, total, count = iter(images), 0.0, 0
    for start in range(0, len(captions), batch_size):
        texts = captions[start:start + batch_size]
        pixels = torch.stack([preprocess(Image.fromarray(image)) for image in itertools.islice(images, len(texts))])
        image_features = torch.nn.functional.normalize(model.encode_image(pixels.to(device)).float(), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1)
        total += (100 * (image_features * text_features).sum(-1)).clamp(min=0).sum().item()
        count += len(texts)
    return total / count
