# Helpers shared by the rules: paths of each artifact, and quoted command-line options built from the config.
import json
import shlex

RUN = f"results/{config['run']}"
STAGES = list(config["stages"])


def cli_options(options: dict) -> str:
    """{'num-samples': 64} -> "--num-samples 64", every value shell-quoted (config strings never reach the shell raw)."""
    return " ".join(f"--{key} {shlex.quote(str(value))}" for key, value in options.items())


def set_options(overrides: dict) -> str:
    """Stage-config overrides as quoted `--set key=<json>` arguments."""
    return " ".join(f"--set {shlex.quote(f'{key}={json.dumps(value)}')}" for key, value in overrides.items())


def workflow_path(path: str) -> str:
    """A config path: relative to the working directory, or else to the workflow's folder (snakemake --directory)."""
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(workflow.basedir, path)


def latents_dir(dataset: str) -> str:
    return f"{RUN}/data/{dataset}/latents"


def stage_dir(stage: str) -> str:
    return f"{RUN}/train/{stage}"


def previous_stage(stage: str):
    index = STAGES.index(stage)
    return STAGES[index - 1] if index > 0 and config["stages"][stage].get("chain", True) else None


def vae_argument(wildcards, input) -> str:
    """The preset's own trained VAE (an input of the rule), or the configured diffusers id / directory."""
    return input.vae[0] if input.vae else config["vae"]["name"]


def vae_input():
    return [f"{RUN}/vae"] if "train" in config["vae"] else []


def stage_overrides(stage: str) -> dict:
    """What the workflow decides for a stage: where it writes, what it reads, where it starts from, how it launches."""
    spec = config["stages"][stage]
    overrides = {
        "out_dir": stage_dir(stage),
        "data.kind": "mds",
        "data.caption_len": config["text_encoder"]["context_length"],
        "data.options": {"datadirs": [latents_dir(d) for d in spec["datasets"]], "resolution": spec["resolution"],
                         **spec.get("loader", {})},
        "model.caption_channels": config["text_encoder"]["width"],
        "model.in_channels": config["vae"]["latent_channels"],
    }
    if previous_stage(stage):
        overrides["init.from"] = stage_dir(previous_stage(stage))
    overrides.update({f"launch.{key}": value for key, value in config.get("launch", {}).items()})
    overrides.update(spec.get("set", {}))
    return overrides


# ----------------------------------------------------------------------------------------- evaluation, report
EVAL = f"{RUN}/eval"


def eval_source(wildcards) -> str:
    return f"{RUN}/data/downloads/{config['eval']['download']}/download.json"


def feature_options(w=None) -> str:
    ev = config["eval"]
    options = {"features": ev["features"], "mode": ev.get("mode", "clean")}
    if ev.get("inception_weights"):
        options["inception-weights"] = ev["inception_weights"]
    return cli_options(options)


def sampling_options(wildcards, input) -> str:
    ev = config["eval"]
    return cli_options({"vae": vae_argument(wildcards, input), "text-encoder": config["text_encoder"]["name"],
                        "resolution": ev["resolution"], "steps": ev["steps"], "guidance": ev["guidance_scale"],
                        "seed": ev["seed"], "batch-size": ev["batch_size"]})


def evaluation_outputs() -> dict:
    outputs = {"fid": f"{EVAL}/fid.json"}
    if "geneval" in config["eval"]:
        outputs["geneval"] = f"{EVAL}/geneval.json"
    return outputs


def report_options(wildcards, input) -> str:
    label = f"{config['run']} {config['eval']['stage']}"
    options = []
    for stage in STAGES:
        options += [f"--metrics {shlex.quote(f'{stage}={stage_dir(stage)}/metrics.jsonl')}",
                    f"--train-stats {shlex.quote(f'{stage}={stage_dir(stage)}/train_stats.json')}",
                    f"--grid {shlex.quote(f'{stage}={RUN}/samples/{stage}.png')}"]
    for metric in evaluation_outputs():
        options.append(f"--{metric} {shlex.quote(f'{label}={input[metric]}')}")
    return " ".join(options)
