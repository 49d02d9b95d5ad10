# Helpers shared by the rules: paths of each artifact, and quoted command-line options built from the config.
# Settings passed to commands are built from wildcards and config only, never from `input` or `output`, since
# Snakemake's params trigger skips params derived from those (a config change would then rerun nothing). Training
# relies on exactly that for its overrides, next to a digest param that does trigger (see rules/train.smk).
import json
import re
import shlex

from microdit.hub import pinned_name
from microdit.store import Store
from microdit.workflow import (GENEVAL_PROMPTS, cli_options, download_threads, generation_minutes, model_settings,
                               one_of, own_sample_captions, part_minutes, resolve_path, slurm_placement,
                               stage_has_ema, stage_weights)

RUN = f"results/{config['run']}"  # what this run owns: training, samples, evaluation, report
STORE = Store(config)  # the data it reads, shared with every run of the same data settings
STAGES = list(config["stages"])
DATA_RETRIES = 2  # a data part resumes where it stopped, so a retry after a time limit or a lost node continues it


# a store path of a key this config does not make is no target (Snakemake's missing-rule error), not a lookup error
wildcard_constraints:
    download=one_of(STORE.keys("downloads")),
    mds=one_of(STORE.keys("mds")),
    latents=one_of(STORE.keys("latents")),
    kind="mds|latents",
    parts=r"\d+",
    part=r"\d+",


def set_options(overrides: dict) -> str:
    """Stage-config overrides as quoted `--set key=<json>` arguments."""
    return " ".join(f"--set {shlex.quote(f'{key}={json.dumps(value)}')}" for key, value in overrides.items())


def placement(gpus: int = 0) -> dict:
    """Partition and account of a job (resources of the SLURM executor): `slurm.gpu`'s when it asks for a GPU."""
    return slurm_placement(config, "gpu" if gpus else "cpu")


def workflow_path(path: str) -> str:
    return resolve_path(path, workflow.basedir)


def synthetic_download(name: str) -> bool:
    """Drawn shapes (the tiny preset): seconds on one core, where the web sources take hours (job sizes)."""
    return config["downloads"][name]["source"] == "synthetic"


def synthetic_dataset(name: str) -> bool:
    return synthetic_download(config["datasets"][name]["download"])


def convert_rules(wildcards) -> dict:
    """The convert settings of the dataset whose MDS key is the `mds` wildcard."""
    return config["datasets"][STORE.dataset_with_mds(wildcards.mds)]["convert"]


def download_part_summary(download: str, parts, part) -> str:
    """download.json of part `part` of `parts` of a download (a config name), in the store."""
    return f"{STORE.download_part(download, parts, part)}/download.json"


def part_path(wildcards) -> str:
    return f"parts{wildcards.parts}/{wildcards.part}"


def part_folders(wildcards) -> list:
    """The part folders of the MDS or latents (`kind`) of store key `key` in `parts` parts, in order."""
    root = f"{STORE.root}/{wildcards.kind}/{wildcards.key}/parts{wildcards.parts}"
    return [f"{root}/{i}" for i in range(int(wildcards.parts))]


def stage_yaml(stage: str) -> str:
    return workflow_path(config["stages"][stage]["config"])


def latents_dir(dataset: str) -> str:
    return STORE.latents_dir(dataset)


def heldout_input(wildcards=None) -> list:
    """The held-out loss's latents, when the config asks for one."""
    if "validation" not in config:
        return []
    return [f"{latents_dir(config['validation']['dataset'])}/index.json"]


def stage_dir(stage: str) -> str:
    return f"{RUN}/train/{stage}"


def keeps_ema(stage: str) -> bool:
    return stage_has_ema(stage_yaml(stage), config["stages"][stage].get("set", {}))


# what a stage's train job exports (train_with_ema: and ema.safetensors)
TRAIN_OUTPUTS = {name: f"{RUN}/train/{{stage}}/{file}" for name, file in (
    ("final", "final.safetensors"), ("stats", "train_stats.json"), ("config", "stage.yaml"),
    ("metrics", "metrics.jsonl"))}


def stage_exports(stage: str) -> list[str]:
    return [path.format(stage=stage) for path in TRAIN_OUTPUTS.values()] + (
        [f"{stage_dir(stage)}/ema.safetensors"] if keeps_ema(stage) else [])


def previous_stage(stage: str):
    index = STAGES.index(stage)
    return STAGES[index - 1] if index > 0 and config["stages"][stage].get("chain", True) else None


VAE_DIR = STORE.vae_dir() if "train" in config["vae"] else None
TEXT_ENCODER = pinned_name(config["text_encoder"]["name"], config["text_encoder"].get("revision"))
LATENT_GPUS = config["latents"].get("gpus", 0)
EVAL_GPUS = config["eval"].get("gpus", 0)  # of each sampling job: stage grids, evaluation images, their features
# One core per evaluation job without a GPU: two of them, or one beside a training stage, share a 2-core machine (at
# two threads each they queued one by one behind the stages, and the tiny demo ran its 45 jobs serially)
EVAL_THREADS = 4 if EVAL_GPUS else 1
# The chain from images to the last stage's weights (convert, VAE, latents, stages) goes first where cores are
# short: every evaluation waits on it, none of it on an evaluation
CHAIN_PRIORITY = 10


def vae_argument(wildcards=None) -> str:
    """The preset's own trained VAE (then also an input of the rule), or the configured diffusers id / directory."""
    return VAE_DIR if "train" in config["vae"] else pinned_name(config["vae"]["name"], config["vae"].get("revision"))


def vae_input():
    return [VAE_DIR] if "train" in config["vae"] else []


def stage_overrides(stage: str) -> dict:
    """What the workflow decides for a stage: where it writes, what it reads, where it starts from, how it launches."""
    spec = config["stages"][stage]
    overrides = {
        "out_dir": stage_dir(stage),
        "data.kind": "mds",
        "data.options": {"datadirs": [latents_dir(d) for d in spec["datasets"]], "resolution": spec["resolution"],
                         **spec.get("loader", {})},
        "data.vae": vae_argument(),  # recorded in the exports, so `microdit sample` needs no --vae
        "data.text_encoder": TEXT_ENCODER,
        **model_settings(config, stage),
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
    overrides.update({f"launch.{key}": value for key, value in config.get("slurm", {}).get("train", {}).items()})
    overrides.update(spec.get("set", {}))
    return overrides


# ----------------------------------------------------------------------------------------- evaluation, report
# results/<run>/eval/: the captions (and their shuffled twin) shared by every evaluated stage; <stage>/ each stage's
# images and scores; reference/<res>px/ what the reference images give at a resolution, shared by the stages there.
EVAL = f"{RUN}/eval"
EVAL_STAGES = config["eval"]["stages"]
EVAL_PARTS = config["eval"].get("parts", 1)
# the folder of all the images each evaluation scores (merge_samples) -> the folder of the parts' folders (never
# under it: the Fréchet distance reads every image below its folder); `shuffled`: the shuffled-caption floor
SAMPLE_PARTS = {"samples": "sample_parts", "shuffled": "shuffled_parts", "geneval/images": "geneval/image_parts"}
GENEVAL_PER_PROMPT = config["eval"].get("geneval", {}).get("images_per_prompt", 4)
GRID_CAPTIONS = 8  # the report's labelled grid: the first captions' samples beside their reference images
CLIP = config["eval"].get("clip")
CLIP_MODEL = f"{EVAL}/clip_model" if CLIP and "train" in CLIP else None  # the preset's own CLIP (train-clip)


def eval_resolution(stage: str) -> int:
    """A stage is evaluated at its own training resolution."""
    return config["stages"][stage]["resolution"]


EVAL_RESOLUTIONS = sorted({eval_resolution(stage) for stage in EVAL_STAGES})


def reference_dir(resolution) -> str:
    return f"{EVAL}/reference/{resolution}px"


def evaluated_weights(stage: str) -> str:
    """The stage's export that is sampled: its EMA (`eval.weights: ema`) where it keeps one, else its final (raw)
    weights; both are declared outputs of the stage's train job."""
    ema = config["eval"].get("weights", "raw") == "ema" and keeps_ema(stage)
    return f"{stage_dir(stage)}/{'ema' if ema else 'final'}.safetensors"


def eval_source(wildcards=None) -> str:
    return download_part_summary(config["eval"]["download"], 1, 0)  # one part (the config check)


def drawn_captions() -> bool:
    """The evaluation's captions describe drawn shapes (the tiny preset): score-shapes can check them."""
    return synthetic_download(config["eval"]["download"])


def feature_options(w=None) -> str:
    ev = config["eval"]
    options = {"features": ev["features"], "mode": ev.get("mode", "clean")}
    if ev.get("inception_weights"):
        options["inception-weights"] = ev["inception_weights"]
    return cli_options(options)


def sampling_options(wildcards) -> str:
    ev = config["eval"]
    options = {"vae": vae_argument(), "text-encoder": TEXT_ENCODER, "resolution": eval_resolution(wildcards.stage),
               "steps": ev["steps"], "guidance": ev["guidance_scale"], "seed": ev["seed"],
               "batch-size": ev["batch_size"]}
    if ev.get("compile", "none") != "none":  # absent when off: runs made before the key keep their parameters
        options["compile"] = ev["compile"]
    return cli_options(options)


def generation_runtime(images: int):
    """The SLURM time limit of a sampling job drawing `images` images of a stage (its resolution)."""
    return lambda w: generation_minutes(-(-images // EVAL_PARTS), config["eval"]["steps"], eval_resolution(w.stage))


def evaluation_outputs(stage: str) -> dict:
    """metric -> the score file of one evaluated stage."""
    outputs = {"fid": f"{EVAL}/{stage}/fid.json"}
    if CLIP:
        outputs["clip"] = f"{EVAL}/{stage}/clip.json"
    if "geneval" in config["eval"]:
        outputs["geneval"] = f"{EVAL}/{stage}/geneval.json"
    return outputs


def fd_context_outputs() -> dict:
    """What the Fréchet distance is read against, per resolution: the reference images' two halves, and their VAE
    reconstructions (labelled as the CLIP score's ceilings, which share their rows)."""
    return {f"{kind}, {res} px": f"{reference_dir(res)}/fd_{name}.json" for res in EVAL_RESOLUTIONS
            for kind, name in (("reference images", "halves"), ("VAE reconstructions", "vae"))}


def shape_score_outputs() -> dict:
    """The drawn-shapes scores (score-shapes) as the report's options name them: each stage's samples, its floor
    (the same weights with shuffled captions) and, per resolution, the two ceilings (the reference images and their
    VAE reconstructions); nothing unless the evaluation's captions are drawn ones."""
    if not drawn_captions():
        return {}
    outputs = {}
    for stage in EVAL_STAGES:
        outputs[f"--shapes {stage}"] = f"{EVAL}/{stage}/shapes/samples.json"
        outputs[f"--shapes-floor {stage}"] = f"{EVAL}/{stage}/shapes/shuffled.json"
    for res in EVAL_RESOLUTIONS:
        for images, label in (("reference", "reference images"), ("vae", "VAE reconstructions")):
            outputs[f"--shapes-ceiling {label}, {res} px"] = f"{reference_dir(res)}/shapes/{images}.json"
    return outputs


def clip_model_input():
    return [CLIP_MODEL] if CLIP_MODEL else []


def clip_options(wildcards=None) -> str:
    """The CLIP score's model: the preset's own folder (its weights in it: no tag), or the configured one."""
    if CLIP_MODEL:
        return cli_options({"model": f"local-dir:{CLIP_MODEL}", "pretrained": ""})
    return cli_options({"model": CLIP["model"], "pretrained": CLIP.get("pretrained", "")})


def clip_context_outputs() -> dict:
    """The CLIP scores a stage's is read against, as the report's options name them, where the captions are drawn
    ones (the floor's images exist only there): each stage's floor and, per resolution, the two ceilings."""
    if not (CLIP and drawn_captions()):
        return {}
    outputs = {f"--clip-floor {stage}": f"{EVAL}/{stage}/clip_shuffled.json" for stage in EVAL_STAGES}
    for res in EVAL_RESOLUTIONS:
        for images, label in (("reference", "reference images"), ("vae", "VAE reconstructions")):
            outputs[f"--clip-ceiling {label}, {res} px"] = f"{reference_dir(res)}/clip_{images}.json"
    return outputs


def all_evaluation_outputs() -> list:
    return ([path for stage in EVAL_STAGES for path in evaluation_outputs(stage).values()]
            + list(fd_context_outputs().values()) + list(shape_score_outputs().values())
            + list(clip_context_outputs().values()))


def grid_reference_dir() -> str:
    """The reference images beside the report's sample grid: at the highest evaluated resolution."""
    return f"{reference_dir(EVAL_RESOLUTIONS[-1])}/grid"


def pair(option: str, name: str, path: str) -> str:
    return f"{option} {shlex.quote(f'{name}={path}')}"


def report_options(wildcards) -> str:
    options = []
    for stage in STAGES:
        options += [pair("--metrics", stage, f"{stage_dir(stage)}/metrics.jsonl"),
                    pair("--train-stats", stage, f"{stage_dir(stage)}/train_stats.json"),
                    pair("--grid", stage, f"{RUN}/samples/{stage}.png"),
                    pair("--stage-config", stage, f"{stage_dir(stage)}/stage.yaml")]
    options += [f"--sample-prompt {shlex.quote(prompt)}" for prompt in config["samples"]["prompts"]]
    for stage in EVAL_STAGES:
        options += [pair(f"--{metric}", stage, path) for metric, path in evaluation_outputs(stage).items()]
        options.append(pair("--eval-samples", stage, f"{EVAL}/{stage}/samples"))
    options += [pair("--fd-context", label, path) for label, path in fd_context_outputs().items()]
    for key, path in {**shape_score_outputs(), **clip_context_outputs()}.items():
        option, _, label = key.partition(" ")
        options.append(pair(option, label, path))
    options += [f"--eval-captions {shlex.quote(f'{EVAL}/captions.jsonl')}",
                f"--grid-reference {shlex.quote(grid_reference_dir())}", f"--grid-captions {GRID_CAPTIONS}"]
    return " ".join(options)
