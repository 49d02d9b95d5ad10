"""Hub models at pinned revisions. A config's `revision:` travels with the model's name as `<hub id>@<revision>` (a
hub id has no '@'), so every step that loads the model (precompute, the training grids, sampling, evaluation) loads
the same files, and the name that results and exports record says which."""
import os

WEIGHT_FILES = ["*.bin", "*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx"]


def pinned_name(name: str, revision: str | None = None) -> str:
    return f"{name}@{revision}" if revision else name


def split_revision(name: str) -> tuple[str, str | None]:
    """(hub id or path, revision or None). A local path that holds an '@' is a path."""
    base, mark, revision = name.rpartition("@")
    if not mark or not base or "/" in revision or os.path.exists(name):
        return name, None
    return base, revision


def open_clip_source(name: str) -> str:
    """The open_clip model name to load: a pinned `hf-hub:<repo>@<revision>` becomes the folder of that revision's
    config and weights (`local-dir:`), since open_clip's hub loader reads the newest files only."""
    base, revision = split_revision(name)
    if revision is None:
        return name
    if not base.startswith("hf-hub:"):
        raise ValueError(f"open_clip model {name!r}: a revision pins hub models ('hf-hub:<repo>') only")
    from huggingface_hub import snapshot_download
    from open_clip.pretrained import download_pretrained_from_hf

    repo = base.removeprefix("hf-hub:")
    # the small files (config, tokenizer), then one copy of the weights: its safetensors when the repository has them
    folder = snapshot_download(repo, revision=revision, ignore_patterns=WEIGHT_FILES)
    download_pretrained_from_hf(repo, revision=revision)
    return f"local-dir:{folder}"
