# Helpers shared by the rules: paths of each artifact, and quoted command-line options built from the config.
# Settings passed to commands are built from wildcards and config only, never from `input` or `output`, since
# Snakemake's params trigger skips params derived from those (a config change would then rerun nothing). Training
# relies on exactly that for its overrides, next to a digest param that does trigger (see rules/train.smk).
import json
import shlex

from microdit.workflow import (GENEVAL_PROMPTS, cli_options, download_threads, generation_minutes, latent_downsample,
                               own_sample_captions, resolve_path, stage_weights)

RUN = f"results/{config['run']}"
STAGES = list(config["stages"])


def set_options(overrides: dict) -> str:
    """Stage-config overrides as quoted `--set key=<json>` arguments."""
    return " ".join(f"--set {shlex.quote(f'{key}={json.dumps(value)}')}" for key, value in overrides.items())


def workflow_path(path: str) -> str:
    return resolve_path(path, workflow.basedir)


def synthetic_download(name: str) -> bool:
    """Drawn shapes (the tiny preset): seconds on one core, where the web sources take hours (job sizes)."""
    return config["downloads"][name]["source"] == "synthetic"


def synthetic_dataset(name: str) -> bool:
    return synthetic_download(config["datasets"][name]["download"])


def stage_yaml(stage: str) -> str:
    return workflow_path(config["stages"][stage]["config"])


def latents_dir(dataset: str) -> str:
    return f"{RUN}/data/{dataset}/latents"


def heldout_input(wildcards=None) -> list:
    """The held-out loss's latents, when the config asks for one."""
    if "validation" not in config:
        return []
    return [f"{latents_dir(config['validation']['dataset'])}/index.json"]


def stage_dir(stage: str) -> str:
    return f"{RUN}/train/{stage}"


def previous_stage(stage: str):
    index = STAGES.index(stage)
    return STAGES[index - 1] if index > 0 and config["stages"][stage].get("chain", True) else None


VAE_DIR = f"{RUN}/vae"
LATENT_GPUS = config["latents"].get("gpus", 0)
EVAL_GPUS = config["eval"].get("gpus", 0)  # of each sampling job: stage grids, evaluation images, their features


def vae_argument(wildcards=None) -> str:
    """The preset's own trained VAE (then also an input of the rule), or the configured diffusers id / directory."""
    return VAE_DIR if "train" in config["vae"] else config["vae"]["name"]


def vae_input():
    return [VAE_DIR] if "train" in config["vae"] else []


def stage_overrides(stage: str) -> dict:
    """What the workflow decides for a stage: where it writes, what it reads, where it starts from, how it launches."""
    spec = config["stages"][stage]
    overrides = {
        "out_dir": stage_dir(stage),
        "data.kind": "mds",
        "data.caption_len": config["text_encoder"]["context_length"],
        "data.options": {"datadirs": [latents_dir(d) for d in spec["datasets"]], "resolution": spec["resolution"],
                         **spec.get("loader", {})},
        "data.vae": vae_argument(),  # recorded in the exports, so `microdit sample` needs no --vae
        "data.text_encoder": config["text_encoder"]["name"],
        "model.caption_channels": config["text_encoder"]["width"],
        "model.in_channels": config["vae"]["latent_channels"],
        "model.latent_res": spec["resolution"] // latent_downsample(config["vae"]),
    }
    # the training-time grids show the config's prompts (unless the stage names its own caption file), decoded
    overrides["samples.vae"] = vae_argument()
    if not own_sample_captions(stage_yaml(stage), spec.get("set", {})):
        overrides["samples.prompts"] = config["samples"]["prompts"]
    if "validation" in config:
        held_out = config["validation"]
        overrides.update({f"validation.{key}": value for key, value in held_out.items() if key != "dataset"})
        overrides.update({"validation.datadirs": [latents_dir(held_out["dataset"])],
                          "validation.resolution": spec["resolution"]})
    if previous_stage(stage):
        overrides["init.from"] = stage_dir(previous_stage(stage))
    elif not spec.get("chain", True):
        # the base YAML's init names where the recipe's previous stage would be: unchained, the stage starts from
        # nothing, unless its `set` names a start (an empty section then, which those `init.*` keys fill in)
        own = any(key == "init" or key.startswith("init.") for key in spec.get("set", {}))
        overrides["init"] = {} if own else None
    overrides.update({f"launch.{key}": value for key, value in config.get("launch", {}).items()})
    overrides.update(spec.get("set", {}))
    return overrides


# ----------------------------------------------------------------------------------------- evaluation, report
EVAL = f"{RUN}/eval"
GENEVAL_PER_PROMPT = config["eval"].get("geneval", {}).get("images_per_prompt", 4)


def evaluated_weights() -> str:
    """The evaluated stage's export that is sampled (`eval.weights`): final (raw) or ema. Both come out of the stage's
    train job, whose declared output final.safetensors is the evaluation's input."""
    name = "ema" if config["eval"].get("weights", "raw") == "ema" else "final"
    return f"{stage_dir(config['eval']['stage'])}/{name}.safetensors"


def eval_source(wildcards) -> str:
    return f"{RUN}/data/downloads/{config['eval']['download']}/download.json"


def feature_options(w=None) -> str:
    ev = config["eval"]
    options = {"features": ev["features"], "mode": ev.get("mode", "clean")}
    if ev.get("inception_weights"):
        options["inception-weights"] = ev["inception_weights"]
    return cli_options(options)


def sampling_options(wildcards) -> str:
    ev = config["eval"]
    options = {"vae": vae_argument(), "text-encoder": config["text_encoder"]["name"], "resolution": ev["resolution"],
               "steps": ev["steps"], "guidance": ev["guidance_scale"], "seed": ev["seed"],
               "batch-size": ev["batch_size"]}
    if ev.get("compile", "none") != "none":  # absent when off: runs made before the key keep their parameters
        options["compile"] = ev["compile"]
    return cli_options(options)


def evaluation_outputs() -> dict:
    outputs = {"fid": f"{EVAL}/fid.json"}
    if "geneval" in config["eval"]:
        outputs["geneval"] = f"{EVAL}/geneval.json"
    return outputs


def shape_score_outputs() -> list:
    """The drawn-shapes scores (score-shapes) of the evaluation samples and of their two ceilings, the reference
    images and their VAE reconstructions: only where the evaluation's captions are drawn ones."""
    if not synthetic_download(config["eval"]["download"]):
        return []
    return [f"{EVAL}/shapes/{images}.json" for images in ("samples", "reference", "vae")]


def report_options(wildcards) -> str:
    label = f"{config['run']} {config['eval']['stage']}"
    options = []
    for stage in STAGES:
        options += [f"--metrics {shlex.quote(f'{stage}={stage_dir(stage)}/metrics.jsonl')}",
                    f"--train-stats {shlex.quote(f'{stage}={stage_dir(stage)}/train_stats.json')}",
                    f"--grid {shlex.quote(f'{stage}={RUN}/samples/{stage}.png')}",
                    f"--stage-config {shlex.quote(f'{stage}={stage_dir(stage)}/stage.yaml')}"]
    options += [f"--sample-prompt {shlex.quote(prompt)}" for prompt in config["samples"]["prompts"]]
    for metric, path in evaluation_outputs().items():
        options.append(f"--{metric} {shlex.quote(f'{label}={path}')}")
    return " ".join(options)
