"""What a report's numbers were made from: each stage's resolved config, the settings behind each score, and the
code that wrote it (microdit/provenance.py, which every artifact's own record comes from)."""
from pathlib import Path

from microdit.errors import UserError
from microdit.files import read_yaml, sha256_file

# the stage settings a reader checks first, as dotted paths into a stage.yaml
STAGE_FIELDS = ("steps", "global_batch", "micro_batch", "seed", "model.arch", "model.latent_res",
                "model.train_mask_ratio", "model.p_mean", "model.p_std", "optim.lr", "schedule.kind", "ema.decay",
                "init.from", "init.mode", "data.options.datadirs", "data.vae", "data.text_encoder")
# what decides a score, as fid.json and geneval.json's generation manifest write it
SCORE_FIELDS = ("metric", "feature_extractor", "checkpoint", "checkpoint_sha256", "mode", "num_images",
                "num_prompts", "images_per_prompt", "metadata_sha256", "resolution", "steps", "guidance", "seed",
                "precision", "captions_sha256")


def read_stage_config(path: Path) -> dict:
    config = read_yaml(path, "stage config")
    if not isinstance(config, dict):
        raise UserError(f"{path}: a stage config is a mapping of settings")
    return config


def dotted(config: dict, path: str):
    value = config
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def stage_settings(path: Path) -> dict:
    """The chosen fields of a stage config that are set, and the file's sha256 (the whole of it is in the file)."""
    config = read_stage_config(path)
    found = {name: dotted(config, name) for name in STAGE_FIELDS}
    return {**{k: v for k, v in found.items() if v not in (None, "", [])}, "sha256": sha256_file(path)[:16]}


def score_settings(result: dict) -> dict:
    return {name: result[name] for name in SCORE_FIELDS if result.get(name) not in (None, "")}
