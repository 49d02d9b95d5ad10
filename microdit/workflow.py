"""What the Snakemake workflow decides in Python, so that it is unit-tested: the config's cross-references (which the
JSON schema cannot express), shell-quoted command-line options, and the job sizes computed from the config.

Imported by the Snakefile at parse time (also inside every SLURM job), so it needs only the standard library and
PyYAML (Snakemake's own dependency).
"""
import math
import os
import re
import shlex

import yaml

from microdit.errors import UserError
from microdit.files import fingerprint
from microdit.train.cosmetic import weight_settings

# The workflow's own rule names: a stage becomes a target rule of its name, and Snakemake refuses two rules of one
# name with an error that does not point at the config (tests/workflow checks this list against the rule files).
RULE_NAMES = frozenset({
    "all", "eval", "data", "download", "convert", "merge_parts", "train_vae", "precompute", "train", "train_with_ema",
    "stage_samples", "eval_captions", "fid_reference_stats", "generate_eval_samples", "merge_samples", "fid",
    "geneval_metadata", "geneval_generate", "geneval_score", "geneval_summary", "score_shapes", "score_shapes_ceiling",
    "eval_captions_shuffled", "reference_images", "reference_grid", "fid_vae", "train_clip", "clip_score",
    "clip_score_floor", "clip_score_ceiling", "report"})

# config/paper.yaml marks what each user must fill in (a path, a partition) as "<what it is>"
PLACEHOLDER = re.compile(r"^<.*>$", re.DOTALL)

TINY_VAE_DOWNSAMPLE = 4  # microdit.tiny_vae.build_tiny_vae's three levels (imported here without torch)

GENEVAL_PROMPTS = 553  # GenEval's evaluation_metadata.jsonl (microdit.eval.geneval.NUM_PROMPTS)

# Seconds per image and sampler step at 512 px on one GPU: the 1.16 B model's guided 30-step Heun sampler draws
# 1.8 img/s on an H200 (docs/benchmarks.md), 0.019 s per image-step; twice that leaves room for an H100, the VAE
# decode and writing PNGs. Cost scales with the token count, (resolution / 512)^2.
SECONDS_PER_IMAGE_STEP_512 = 0.04


def cli_options(options: dict) -> str:
    """{'num-samples': 64, 'sizes': [32, 64]} -> "--num-samples 64 --sizes 32 64", options and values shell-quoted
    (config strings never reach the shell raw, keys included)."""
    words = []
    for key, value in options.items():
        words += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return " ".join(shlex.quote(word) for word in words)


def one_of(names) -> str:
    """A wildcard's regular expression matching exactly these names (none: nothing)."""
    # the longest first: a name that is another's prefix must not win the match
    return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)) or "(?!)"


def resolve_path(path: str, basedir: str) -> str:
    """A config path: relative to the working directory if it exists there, else to the workflow's folder
    (snakemake --directory elsewhere)."""
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(basedir, path)


def schema_errors(config: dict, schema_path: str) -> list[str]:
    """The config's departures from the JSON schema, one line each naming the dotted key (Snakemake's `validate`
    prints the whole schema instead, and the offending key only far below it)."""
    import jsonschema

    with open(schema_path, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    base = jsonschema.validators.validator_for(schema)
    # YAML reads .nan and .inf as numbers, and no bound refuses NaN: a number must be finite to be one
    finite = base.TYPE_CHECKER.redefine(
        "number", lambda checker, value: base.TYPE_CHECKER.is_type(value, "number") and math.isfinite(value))
    validator = jsonschema.validators.extend(base, type_checker=finite)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path)))
    return [_schema_error(error) for error in errors]


def _schema_error(error) -> str:
    where = ".".join(map(str, error.absolute_path))
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        key = ".".join(filter(None, [where, str(unknown[0]) if unknown else ""]))
        return f"{key}: unknown key (expected one of: {', '.join(known)})"
    if error.validator in ("oneOf", "anyOf"):
        forms = [sorted(option.get("required", [])) for option in error.validator_value]
        needs = " or ".join(", ".join(keys) for keys in forms if keys)
        return f"{where or 'config'}: expected exactly one form" + (f" (with {needs})" if needs else "")
    if error.validator == "not":  # jsonschema would print the refused subschema
        expected = error.schema.get("description")
        return f"{where or 'config'}: {error.instance!r} is not allowed" + (f" (expected {expected})" if expected else "")
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"{where or 'config'}: {message}"


def _unknown(key: str, value, known, what: str) -> str:
    return f"{key}: {value!r} is not {what} (expected one of: {', '.join(sorted(known)) or 'none defined'})"


def placeholders(value, where: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of each "<...>" value left in a config (or any part of one)."""
    if isinstance(value, dict):
        return [found for name, item in value.items() for found in placeholders(item, f"{where}.{name}".lstrip("."))]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in placeholders(item, f"{where}.{i}")]
    return [(where, value)] if isinstance(value, str) and PLACEHOLDER.match(value) else []


def config_errors(config: dict, basedir: str) -> list[str]:
    """What is wrong with a schema-valid config: placeholders left unedited, and its references between its sections,
    one message per problem, each naming the key and what it expected. Stage config files are looked up as
    `resolve_path` does."""
    errors = [f"{key}: {value} is a placeholder (expected your own value)" for key, value in placeholders(config)]
    downloads, datasets, stages = config["downloads"], config["datasets"], config["stages"]
    for name, spec in datasets.items():
        if spec["download"] not in downloads:
            errors.append(_unknown(f"datasets.{name}.download", spec["download"], downloads, "a key of downloads"))
    if config["eval"]["download"] not in downloads:
        errors.append(_unknown("eval.download", config["eval"]["download"], downloads, "a key of downloads"))
    elif downloads[config["eval"]["download"]].get("parts", 1) != 1:
        errors.append(f"downloads.{config['eval']['download']}.parts: the evaluation reads its images and captions "
                      f"from one folder (expected 1, or no parts key)")
    dataset_keys = {"vae.train.dataset": config["vae"].get("train", {}).get("dataset"),
                    "eval.clip.train.dataset": (config["eval"].get("clip") or {}).get("train", {}).get("dataset"),
                    "validation.dataset": config.get("validation", {}).get("dataset")}
    errors += [_unknown(key, name, datasets, "a key of datasets")
               for key, name in dataset_keys.items() if name is not None and name not in datasets]
    resolutions = config["latents"]["resolutions"]
    for name, spec in stages.items():
        if name in RULE_NAMES:
            errors.append(f"stages.{name}: the name of a workflow rule; rename the stage (e.g. stage1)")
        errors += [_unknown(f"stages.{name}.datasets", d, datasets, "a key of datasets")
                   for d in spec["datasets"] if d not in datasets]
        if spec["resolution"] not in resolutions:
            errors.append(f"stages.{name}.resolution: {spec['resolution']} px has no latents (expected one of "
                          f"latents.resolutions: {', '.join(map(str, resolutions))})")
        elif spec["resolution"] % (2 * latent_downsample(config["vae"])):
            errors.append(f"stages.{name}.resolution: {spec['resolution']} px is no whole number of 2x2 latent "
                          f"patches with the VAE's {latent_downsample(config['vae'])}x downsampling (expected a "
                          f"multiple of {2 * latent_downsample(config['vae'])})")
        if not os.path.isfile(resolve_path(spec["config"], basedir)):
            errors.append(f"stages.{name}.config: {spec['config']} not found (a stage YAML, relative to the working "
                          f"directory or to {basedir})")
        elif problem := stage_yaml_problem(resolve_path(spec["config"], basedir)):
            errors.append(f"stages.{name}.config: {spec['config']}: {problem}")
    batches = -(-config["eval"]["num_captions"] // config["eval"]["batch_size"])
    if config["eval"].get("parts", 1) > batches:
        errors.append(f"eval.parts: {config['eval']['parts']} parts of {batches} batches (num_captions / batch_size): "
                      f"each part draws whole batches (expected at most {batches})")
    errors += [_unknown("eval.stages", stage, stages, "a key of stages")
               for stage in config["eval"]["stages"] if stage not in stages]
    return errors


def slurm_placement(config: dict, kind: str) -> dict:
    """The SLURM partition (and account) of a kind of job (`slurm.cpu`, `slurm.gpu`, `slurm.train`), as the executor
    plugin's resources; empty where the config names none (the cluster's default partition, the user's account)."""
    spec = config.get("slurm", {}).get(kind, {})
    return {f"slurm_{key}": spec[key] for key in ("partition", "account") if key in spec}


def download_threads(spec: dict) -> int:
    """CPUs of a download job: img2dataset (CC12M's default route) runs its `processes` workers (16 unless the
    options say otherwise, as `microdit download cc12m`); the synthetic source draws on one; the other sources are
    a few parallel file transfers."""
    if spec["source"] == "synthetic":
        return 1
    options = spec.get("options", {})
    if spec["source"] == "cc12m" and options.get("route", "img2dataset") == "img2dataset":
        return int(options.get("processes", 16))
    return 4


def part_minutes(whole_minutes: int, parts: int, least: int = 30) -> int:
    """SLURM time limit of one of `parts` jobs sharing a job of `whole_minutes` (the parts are near-equal ranges);
    at least `least` minutes for start-up. A part cut short resumes on its retry."""
    return max(least, math.ceil(whole_minutes / parts))


def generation_minutes(images: int, steps: int, resolution: int) -> int:
    """SLURM time limit of a job drawing `images` images on one GPU: half an hour of start-up (loading the models)
    and margin plus the sampling estimate. A job cut short resumes where it stopped on the rerun."""
    seconds = images * steps * SECONDS_PER_IMAGE_STEP_512 * (resolution / 512) ** 2
    return 30 + math.ceil(seconds / 60)


def stage_yaml_problem(path: str) -> str | None:
    """Why a stage YAML cannot be read as a mapping of settings, or None."""
    try:
        settings = read_stage_yaml(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return f"cannot read it as YAML ({str(err).splitlines()[0]})"
    return None if isinstance(settings, dict) else "expected a mapping of stage settings at the top level"


def read_stage_yaml(path: str):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def stage_section(base_yaml: str, overrides: dict, name: str):
    """A section of a stage's settings as its job will resolve it (`--set` in order: `name` replaces the YAML's,
    `name.key` sets one key); None when absent or null."""
    settings = read_stage_yaml(base_yaml) if os.path.isfile(base_yaml) else None
    section = settings.get(name) if isinstance(settings, dict) else None
    for key, value in overrides.items():
        if key == name:
            section = value
        elif key.startswith(name + "."):
            section = dict(section) if isinstance(section, dict) else {}
            section[key[len(name) + 1:]] = value
    return section


def stage_has_ema(base_yaml: str, overrides: dict) -> bool:
    """Whether a stage keeps an EMA of its weights (and so exports ema.safetensors)."""
    return stage_section(base_yaml, overrides, "ema") is not None


def own_sample_captions(base_yaml: str, overrides: dict) -> bool:
    """Whether a stage names a caption file of its own for the training-time grids (the workflow then passes no
    prompts)."""
    samples = stage_section(base_yaml, overrides, "samples")
    return isinstance(samples, dict) and bool(samples.get("captions"))


def resolved_stage(stage: str, base_yaml: str, overrides: dict):
    """A stage's settings as its job resolves them (`microdit train --config BASE --set ...`: its YAML with the
    workflow's overrides), validated. Imports torch (the stage dataclasses name the model's variants), so it runs in
    Snakemake's main process and `microdit plan` only."""
    from microdit.train.config import set_setting, stage_config_from_dict

    settings = read_stage_yaml(base_yaml)
    for key, value in overrides.items():
        set_setting(settings, key, value, f"stages.{stage}.set: {key}")
    return stage_config_from_dict(settings, source=f"stages.{stage} ({base_yaml} with the workflow's settings)")


def stage_setting_errors(stage: str, base_yaml: str, overrides: dict) -> list[str]:
    """What the trainer would refuse in a stage's resolved settings, found when the workflow is parsed rather than
    when the stage's job starts, after the jobs before it and after Snakemake has removed its old outputs."""
    try:
        resolved_stage(stage, base_yaml, overrides)
    except UserError as err:
        return [str(err)]
    return []


def latent_downsample(vae: dict) -> int:
    """Pixels per latent side of the run's VAE: `vae.downsample`, else the preset's own trained VAE's 4 (three
    levels, microdit/tiny_vae.py) or the 8 of the diffusers VAEs the recipe uses (SD, SDXL, the 16-channel Ostris)."""
    return int(vae.get("downsample", TINY_VAE_DOWNSAMPLE if "train" in vae else 8))


def model_settings(config: dict, stage: str) -> dict:
    """The stage settings that the encoders and the stage's resolution decide: the denoiser's input and caption
    shapes."""
    return {"data.caption_len": config["text_encoder"]["context_length"],
            "model.caption_channels": config["text_encoder"]["width"],
            "model.in_channels": config["vae"]["latent_channels"],
            "model.latent_res": config["stages"][stage]["resolution"] // latent_downsample(config["vae"])}


def stage_weights(base_yaml: str, overrides: dict) -> str:
    """A digest of what decides a stage's trained weights among its settings: its base YAML and the workflow's
    overrides, cosmetic settings dropped (logging, checkpoint cadence, sample grids, launch, speed switches,
    loader workers). The train rule's rerun trigger: editing a cosmetic setting reruns no training and none of what
    follows from it."""
    return fingerprint({"base": weight_settings(read_stage_yaml(base_yaml)), "overrides": weight_settings(overrides)})
