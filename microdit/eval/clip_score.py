"""CLIP score of generated images against their captions: mean over images of max(100 * cos(image, text), 0), the
torchmetrics definition. Needs CLIP weights (open_clip downloads them from the hub), so it is optional offline."""
import os
from pathlib import Path

import torch
from PIL import Image

from microdit.errors import UserError


def load_clip(model_name: str, pretrained: str | None, device="cpu"):
    """An open_clip model by architecture and weights tag, or `hf-hub:<repo>@<revision>` at that revision."""
    import open_clip

    from microdit.hub import open_clip_source

    try:
        source = open_clip_source(model_name)
        model, _, preprocess = open_clip.create_model_and_transforms(source, pretrained=pretrained or None)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"CLIP {model_name} ({pretrained}) is not available: {str(err).splitlines()[0]}; "
                        "it needs the model hub or its cache") from None
    return model.eval().to(device), preprocess, open_clip.get_tokenizer(source)


@torch.no_grad()
def clip_score(image_paths: list[str | os.PathLike], captions: list[str], model_name: str = "ViT-L-14",
               pretrained: str | None = "openai", device="cpu", batch_size: int = 64) -> float:
    if len(image_paths) != len(captions):
        raise UserError(f"{len(image_paths)} images but {len(captions)} captions")
    model, preprocess, tokenizer = load_clip(model_name, pretrained, device)
    total = 0.0
    for start in range(0, len(captions), batch_size):
        paths, texts = image_paths[start:start + batch_size], captions[start:start + batch_size]
        images = torch.stack([preprocess(Image.open(Path(p)).convert("RGB")) for p in paths]).to(device)
        image_features = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1)
        total += (100 * (image_features * text_features).sum(-1)).clamp(min=0).sum().item()
    return total / len(captions)
