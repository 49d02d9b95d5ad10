"""The workflow's config checks, quoting, job sizes and rerun triggers: microdit.workflow directly, and Snakemake dry
runs (seconds each) over a stand-in `microdit` that only creates each command's outputs (conftest.py)."""
import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from microdit.workflow import (GENEVAL_PROMPTS, RULE_NAMES, cli_options, config_errors, download_threads,
                               generation_minutes, own_sample_captions, part_minutes, placeholders, schema_errors,
                               stage_setting_errors)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = str(REPO / "config" / "schema.yaml")

def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


def snakemake(workdir: Path, *args: str, fake: Path | None = None) -> subprocess.CompletedProcess:
    path = os.pathsep.join(([str(fake)] if fake else []) + [str(Path(sys.executable).parent), os.environ["PATH"]])
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           *args], capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": path})


def write_config(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def job_counts(output: str) -> dict:
    table = output[output.index("Job stats"):].split("\n\n")[0].splitlines()[3:]
    return {rule: int(n) for rule, n in (line.split() for line in table) if rule != "total"}


def shell_commands(output: str, command: str) -> list[str]:
    """The `microdit <command>` lines a dry run with -p prints (Snakemake 9: after "Shell command: ")."""
    lines = (line.strip().removeprefix("Shell command:").strip() for line in output.splitlines())
    return [line for line in lines if line.startswith(f"microdit {command} ")]


def train_arguments(output: str) -> dict[str, list[str]]:
    """stage -> the arguments of its `microdit train` command in a dry run with -p."""
    commands = [shlex.split(c) for c in shell_commands(output, "train")]
    return {next(a for a in args if a.startswith("out_dir=")).split("/")[-1].rstrip('"'): args for args in commands}


# ------------------------------------------------------------------------------------------- cross-references
def test_presets_are_consistent(paper_filled):
    assert config_errors(load("tiny"), str(REPO)) == []
    paper = load("paper")  # as shipped, only its placeholders are refused
    assert [error.split(":")[0] for error in config_errors(paper, str(REPO))] == [key for key, _ in placeholders(paper)]

    def fill(config: dict, overlay: dict) -> None:
        for key, value in overlay.items():
            fill(config[key], value) if isinstance(value, dict) else config.__setitem__(key, value)

    fill(paper, yaml.safe_load(paper_filled.read_text()))
    assert config_errors(paper, str(REPO)) == []


def _rename_stage(config, old, new):
    config["stages"] = {new if k == old else k: v for k, v in config["stages"].items()}
    config["eval"]["stages"] = [new if k == old else k for k in config["eval"]["stages"]]


BROKEN = {
    "datasets.synthetic.download": lambda c: c["datasets"]["synthetic"].update(download="nosuch"),
    "eval.download": lambda c: c["eval"].update(download="nosuch"),
    "stages.stage2.datasets": lambda c: c["stages"]["stage2"].update(datasets=["synthetic", "nosuch"]),
    "vae.train.dataset": lambda c: c["vae"]["train"].update(dataset="nosuch"),
    "eval.stages": lambda c: c["eval"].update(stages=["stage4", "nosuch"]),
    "stages.stage1.resolution": lambda c: c["stages"]["stage1"].update(resolution=48),
    "stages.stage1.config": lambda c: c["stages"]["stage1"].update(config="config/stages/tiny/nosuch.yaml"),
    "stages.train": lambda c: _rename_stage(c, "stage1", "train"),
    "downloads.synthetic_eval.parts": lambda c: c["downloads"]["synthetic_eval"].update(parts=2),  # eval's: one
    "validation.dataset": lambda c: c["validation"].update(dataset="nosuch"),
    "eval.parts": lambda c: c["eval"].update(parts=5),  # 128 captions in 4 batches of 32
}


@pytest.mark.parametrize("key", list(BROKEN))
def test_a_broken_reference_is_named(key):
    config = load("tiny")
    BROKEN[key](config)
    assert schema_errors(config, SCHEMA) == []  # each is schema-valid: only the cross-check can catch it
    (error,) = config_errors(config, str(REPO))
    assert error.startswith(f"{key}:")
    assert "nosuch" in error or "expected" in error or "rename" in error


def test_each_stage_is_sampled_from_its_ema_export_where_it_keeps_one(tmp_path):
    config = load("tiny")
    config["eval"]["stages"] = ["stage1", "stage2"]
    config["stages"]["stage2"]["set"] = {"ema.decay": 0.9}  # stage 2's YAML has none: set adds one
    assert config_errors(config, str(REPO)) == []

    def generated() -> dict:
        result = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--configfile",
                           write_config(tmp_path / "c.yaml", config))
        commands = shell_commands(result.stdout, "generate")
        assert not any("--compile" in c for c in commands)  # the tiny preset samples on the CPU: compiling is slow
        return {re.search(r"--out results/tiny/eval/(\w+/\w+)/0", c)[1]: re.search(r"--checkpoint (\S+)", c)[1]
                for c in commands}

    # each stage draws its samples and its floor's (shuffled captions) with the same weights, at its resolution
    assert generated() == {"stage1/sample_parts": "results/tiny/train/stage1/final.safetensors",
                           "stage1/shuffled_parts": "results/tiny/train/stage1/final.safetensors",
                           "stage2/sample_parts": "results/tiny/train/stage2/ema.safetensors",
                           "stage2/shuffled_parts": "results/tiny/train/stage2/ema.safetensors"}
    config["eval"]["weights"] = "raw"
    assert set(generated().values()) == {f"results/tiny/train/stage{i}/final.safetensors" for i in (1, 2)}


def test_a_stage_yaml_that_is_no_mapping_of_settings_is_named(tmp_path):
    config = load("tiny")
    (tmp_path / "list.yaml").write_text("- steps: 2\n")
    (tmp_path / "broken.yaml").write_text("steps: [2\n")
    config["stages"]["stage1"]["config"] = str(tmp_path / "list.yaml")
    config["stages"]["stage2"]["config"] = str(tmp_path / "broken.yaml")
    first, second = config_errors(config, str(REPO))
    assert first.startswith("stages.stage1.config:") and "expected a mapping" in first
    assert second.startswith("stages.stage2.config:") and "cannot read it as YAML" in second


def test_stage_config_is_found_beside_the_workflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snakemake --directory elsewhere: config paths are the workflow's
    assert config_errors(load("tiny"), str(REPO)) == []


@pytest.mark.parametrize("change", [
    lambda c: c["downloads"]["synthetic"]["options"].update({"x $(touch /tmp/pwned) #": 1}),
    lambda c: c["downloads"]["synthetic"]["options"].update({"--already-dashed": 1}),
    lambda c: c["stages"].update({"st/4": c["stages"]["stage4"]}),
    lambda c: c["datasets"].update({"a b": c["datasets"]["synthetic"]}),
    lambda c: c["eval"].update(gpus=2),
    lambda c: c["downloads"]["synthetic"]["options"].update({"shuffle": True}),  # no source takes a bare flag
    lambda c: c["samples"].update(guidance_scale=float("nan")),  # YAML's .nan: no bound refuses it
    lambda c: c["eval"].update(guidance_scale=float("inf")),
    lambda c: c["report"].update(price_per_gpu_hour=float("nan")),
    lambda c: c.update(run=".."),  # results/../ is the repository itself
    # the rule's own flags: the second --out (or --summary, --subset) would win and send the shards elsewhere
    lambda c: c["downloads"]["synthetic"]["options"].update({"out": "/elsewhere"}),
    lambda c: c["downloads"]["synthetic"]["options"].update({"summary": "/elsewhere.json"}),
    lambda c: c["downloads"]["synthetic"]["options"].update({"subset": "small"}),
    lambda c: c["downloads"]["synthetic"]["options"].update({"parts": 2}),
])
def test_schema_refuses_unsafe_names_idle_gpus_and_flags(change):
    config = load("tiny")
    change(config)
    (error,) = schema_errors(config, SCHEMA)
    assert re.search("does not match|greater than the maximum|is not of type|is not allowed", error)


def test_schema_errors_are_one_line_each_naming_the_key():
    config = load("tiny")
    config["sample"] = {}
    config["eval"]["guidance"] = 5.0
    config["latents"]["resolutions"] = [32, "x"]
    config["vae"]["name"] = "also a hub VAE"
    assert schema_errors(config, SCHEMA) == [
        "sample: unknown key (expected one of: datasets, downloads, eval, latents, launch, report, run, samples, "
        "seed, slurm, stages, store, text_encoder, vae, validation)",
        "eval.guidance: unknown key (expected one of: batch_size, caption_seed, clip, compile, download, features, "
        "geneval, gpus, guidance_scale, inception_weights, mode, num_captions, parts, seed, shuffle_seed, stages, steps, "
        "weights)",
        "latents.resolutions.1: 'x' is not of type 'integer'",
        "vae: expected exactly one form (with name or train)"]


def test_stage_settings_are_checked_as_their_job_will_resolve_them(tmp_path):
    base = str(REPO / "config" / "stages" / "tiny" / "stage2.yaml")
    assert stage_setting_errors("stage2", base, {"optim.lr": 1e-4, "init": None}) == []
    (error,) = stage_setting_errors("stage2", base, {"optim.lrr": 1e-4})
    assert error.startswith("stages.stage2 (") and "optim.lrr: unknown field" in error
    (error,) = stage_setting_errors("stage2", base, {"model.train_mask_ratio": 1.5})
    assert "model.train_mask_ratio: must be in [0, 1), got 1.5" in error
    (error,) = stage_setting_errors("stage2", base, {"optim": 1, "optim.lr": 1e-4})
    assert "stages.stage2.set: optim.lr: optim is not a section" in error
    # through Snakemake: refused when the workflow is parsed, before any job (and before any output is removed)
    config = load("tiny")
    config["stages"]["stage3"]["set"] = {"steps": "ten"}
    config["launch"]["partiton"] = "gpu"
    result = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", write_config(tmp_path / "c.yaml", config))
    printed = result.stdout + result.stderr  # Snakemake prints its errors on either, by version
    assert result.returncode != 0 and "invalid stage settings:" in printed
    assert re.search(r"stages\.stage1 \(\S*config/stages/tiny/stage1\.yaml with the workflow's settings\): "
                     r"launch\.partiton: unknown field", printed)
    assert "steps: expected an integer, got 'ten'" in printed


def test_a_stage_with_its_own_grid_captions_gets_no_prompts(tmp_path):
    base = str(REPO / "config" / "stages" / "tiny" / "stage1.yaml")
    assert not own_sample_captions(base, {})
    assert own_sample_captions(base, {"samples.captions": "c.safetensors"})
    assert own_sample_captions(base, {"samples": {"every": 5, "captions": "c.safetensors"}})
    config = load("tiny")
    config["stages"]["stage2"]["set"] = {"samples.captions": str(tmp_path / "c.safetensors")}
    result = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", write_config(tmp_path / "c.yaml", config))
    assert result.returncode == 0, result.stdout[-3000:]
    prompts = {stage: any(a.startswith("samples.prompts=") for a in args)
               for stage, args in train_arguments(result.stdout).items()}
    assert prompts == {"stage1": True, "stage2": False, "stage3": True, "stage4": True}


def test_a_stage_resolution_sets_the_model_latent_grid(tmp_path):
    config = load("tiny")
    config["latents"]["resolutions"] = [32, 64, 48]
    config["stages"]["stage2"]["resolution"] = 64  # the tiny VAE downsamples 4x: 16x16 latents
    result = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", write_config(tmp_path / "c.yaml", config))
    assert result.returncode == 0, result.stderr[-3000:]
    latent_res = {stage: next(a for a in args if a.startswith("model.latent_res="))
                  for stage, args in train_arguments(result.stdout).items()}
    assert latent_res == {"stage1": "model.latent_res=8", "stage2": "model.latent_res=16",
                          "stage3": "model.latent_res=16", "stage4": "model.latent_res=16"}
    config["stages"]["stage2"]["resolution"] = 48  # 12x12 latents: fine; 6 patches of 2
    assert config_errors(config, str(REPO)) == []
    config["vae"]["downsample"] = 16  # 48 px: 3x3 latents, no whole 2x2 patches
    (error,) = config_errors(config, str(REPO))
    assert error.startswith("stages.stage2.resolution: 48 px is no whole number of 2x2 latent patches")


# --------------------------------------------------------------------------------------------------- quoting
def test_cli_options_quote_keys_and_values(tmp_path):
    marker = tmp_path / "pwned"
    options = {f"x $(touch {marker}) #": "1; touch " + str(marker), "num-samples": 64}
    line = cli_options(options)
    assert shlex.split(line) == [f"--x $(touch {marker}) #", f"1; touch {marker}", "--num-samples", "64"]
    echoed = subprocess.run(["bash", "-c", f"printf '%s\\n' {line}"], capture_output=True, text=True, check=True)
    assert echoed.stdout.splitlines() == shlex.split(line) and not marker.exists()
    assert cli_options({"num-samples": 64}) == "--num-samples 64"
    assert cli_options({"resolutions": [32, "6 4"]}) == "--resolutions 32 '6 4'"  # a list: one word per item


def test_a_malicious_option_key_stops_the_workflow_before_any_job(tmp_path):
    marker = tmp_path / "pwned"
    config = load("tiny")
    config["downloads"]["synthetic_eval"]["options"][f"x $(touch {marker}) #"] = 1
    result = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", write_config(tmp_path / "c.yaml", config))
    assert result.returncode != 0 and "options" in result.stdout + result.stderr
    assert not marker.exists() and not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------ rules and jobs
def test_rule_names_are_the_workflows():
    declared = {m.group(1) for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
                for m in re.finditer(r"^(?:rule|use rule \w+ as) (\w+)(?::| with:)", path.read_text(), re.MULTILINE)}
    assert declared == RULE_NAMES


def test_commands_follow_chain_vae_channels_gpus_and_pixel_cap(tmp_path):
    config = load("tiny")
    config["vae"]["latent_channels"] = 16
    config["datasets"]["synthetic"]["convert"]["max_pixels"] = 4_000_000
    config["latents"]["gpus"] = 2
    config["text_encoder"]["context_length"] = 32
    config["eval"]["stages"] = ["stage1", "stage2", "stage3", "stage4"]  # two per resolution share its references
    config["stages"]["stage2"]["chain"] = False
    config["stages"]["stage3"].update(chain=False, set={"steps": 3, "init.from": "elsewhere", "init.mode": "weights"})
    result = snakemake(tmp_path, "-n", "-p", "--cores", "64", "--configfile",
                       write_config(tmp_path / "c.yaml", config))
    assert result.returncode == 0, result.stderr[-3000:]
    stage_configs = train_arguments(result.stdout)
    assert "init=null" in stage_configs["stage2"]  # unchained: the base YAML's placeholder is dropped
    stage3 = stage_configs["stage3"]  # unchained with its own start: an empty init that its keys fill in
    assert stage3.index("init={}") < stage3.index('init.from="elsewhere"')
    assert 'init.from="results/tiny/train/stage3"' in stage_configs["stage4"]
    assert not any(a.startswith("init") for a in stage_configs["stage1"])
    (train_vae,) = shell_commands(result.stdout, "train-vae")
    assert "--latent-channels 16" in train_vae
    precomputes = shell_commands(result.stdout, "precompute")  # the training set and the held-out one
    assert len(precomputes) == 2 and all("--processes 2" in c and "--max-length 32" in c for c in precomputes)
    counts = job_counts(result.stdout)
    assert (counts["train"], counts["train_with_ema"]) == (2, 2)  # the tiny preset's stages 3 and 4 keep an EMA
    converts = shell_commands(result.stdout, "convert")
    assert sorted("--max-pixels 4000000" in command for command in converts) == [False, True]
    # the drawn shapes are scored in each stage's samples and floor, and per resolution in the two ceilings
    # (reference images, VAE reconstructions); each stage's Fréchet distance reads its resolution's statistics
    scores = shell_commands(result.stdout, "score-shapes")
    assert len(scores) == 4 * 2 + 2 * 2
    assert any("--samples results/tiny/eval/stage4/shuffled --out results/tiny/eval/stage4/shapes/shuffled.json"
               in c and "--captions results/tiny/eval/captions.jsonl" in c for c in scores)  # the true captions
    # the floor is drawn from the deranged captions
    assert any("--captions results/tiny/eval/captions_shuffled.jsonl --out results/tiny/eval/stage4/shuffled_parts/0"
               in c for c in shell_commands(result.stdout, "generate"))
    assert any(re.search(r"--reference results/store/downloads/synthetic-\w+/parts1/0 --resolution 32 --out "
                         r"results/tiny/eval/reference/32px/shapes/reference.json", c) for c in scores)
    assert any(re.search(r"--resolution 64 --vae results/store/vae/vae-\w+ --out "
                         r"results/tiny/eval/reference/64px/shapes/vae.json", c) for c in scores)
    fids = shell_commands(result.stdout, "fid")
    assert any("eval/stage2/samples --reference-stats results/tiny/eval/reference/32px/stats.npz" in c for c in fids)
    assert any("eval/stage3/samples --reference-stats results/tiny/eval/reference/64px/stats.npz" in c for c in fids)
    assert any("reference/64px/vae --reference-stats results/tiny/eval/reference/64px/stats.npz" in c for c in fids)
    # the preset's own CLIP, trained at the evaluated resolutions, scores each stage, its floor and the two ceilings
    (train_clip,) = shell_commands(result.stdout, "train-clip")
    assert re.search(r"--input results/store/mds/synthetic-\w+/parts1 --out results/tiny/eval/clip_model "
                     r"--seed 0 --resolutions 32 64 --steps \d+", train_clip)
    clips = shell_commands(result.stdout, "clip-score")
    assert len(clips) == 4 * 2 + 2 * 2 and all("--model local-dir:results/tiny/eval/clip_model" in c for c in clips)
    assert any("--samples results/tiny/eval/stage4/shuffled --captions results/tiny/eval/captions.jsonl --out "
               "results/tiny/eval/stage4/clip_shuffled.json" in c for c in clips)
    assert any(re.search(r"--reference results/store/downloads/synthetic-\w+/parts1/0 --resolution 32 --captions "
                         r"\S+ --out results/tiny/eval/reference/32px/clip_reference.json", c) for c in clips)
    assert any("--samples results/tiny/eval/reference/64px/vae --captions results/tiny/eval/captions.jsonl --out "
               "results/tiny/eval/reference/64px/clip_vae.json" in c for c in clips)


def dry_run_jobs(output: str) -> dict:
    """rule name -> (threads, resources text) of each job a dry run lists."""
    jobs, rule = {}, None
    for line in output.splitlines():
        if line.startswith("rule "):
            rule = line[5:].rstrip(":")
            jobs.setdefault(rule, [1, ""])
        elif rule and line.strip().startswith("threads:"):
            jobs[rule][0] = int(line.split(":")[1])
        elif rule and line.strip().startswith("resources:"):
            jobs[rule][1] = line
    return jobs


def test_job_sizes_fit_a_two_core_machine_for_tiny_and_ask_gpus_for_the_paper(tmp_path, paper_filled):
    tiny = snakemake(tmp_path / "tiny", "-n", "--cores", "64", "--configfile", str(REPO / "config" / "tiny.yaml"))
    assert tiny.returncode == 0, tiny.stderr[-3000:]
    for rule, (threads, resources) in dry_run_jobs(tiny.stdout).items():
        assert threads <= 2 and "gpu=1" not in resources, (rule, threads, resources)
    paper = snakemake(tmp_path / "paper", "-n", "--cores", "64", "--configfile",
                      str(REPO / "config" / "paper.yaml"), str(paper_filled))
    assert paper.returncode == 0, paper.stderr[-3000:]
    jobs = dry_run_jobs(paper.stdout)
    for rule in ("precompute", "stage_samples", "generate_eval_samples", "geneval_generate", "geneval_score"):
        assert "gpu=1" in jobs[rule][1] and jobs[rule][0] > 1, (rule, jobs[rule])
    for rule in ("download", "convert", "precompute", "generate_eval_samples", "report"):
        assert "runtime=" in jobs[rule][1] and "mem_mb=" in jobs[rule][1], (rule, jobs[rule])
    assert "eval.geneval is set" in paper.stdout + paper.stderr  # GenEval's scoring needs --sdm conda


def test_generation_minutes_and_download_threads():
    fid_30k = generation_minutes(30000, 30, 512)
    assert 5 * 60 < fid_30k < 24 * 60  # the paper's FID-30K: hours on one GPU, within a day's limit
    assert generation_minutes(128, 20, 64) == 31 and generation_minutes(0, 30, 512) == 30
    assert download_threads({"source": "synthetic"}) == 1
    assert download_threads({"source": "cc12m"}) == 16
    assert download_threads({"source": "cc12m", "options": {"processes": 4}}) == 4
    assert download_threads({"source": "coco2014"}) == 4
    assert part_minutes(2880, 20) == 144 and part_minutes(2880, 7) == 412 and part_minutes(60, 4) == 30


def test_geneval_prompt_count_is_the_evaluators():
    from microdit.eval.geneval import NUM_PROMPTS

    assert GENEVAL_PROMPTS == NUM_PROMPTS


# -------------------------------------------------------------------------------------------- rerun triggers
@pytest.mark.slow  # a stand-in run of the whole tiny DAG (~15 s)
def test_config_changes_rerun_the_rules_that_use_them(tmp_path, stand_in_microdit):
    fake = stand_in_microdit
    config = load("tiny")
    config["vae"] = {"latent_channels": 4, "name": str(tmp_path / "vae_a")}
    config["eval"]["stages"] = ["stage4"]  # one evaluated stage keeps the stand-in run short
    base = write_config(tmp_path / "base.yaml", config)
    workdir = tmp_path / "run"
    done = snakemake(workdir, "--cores", "2", "--configfile", base, fake=fake)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in snakemake(workdir, "-n", "--cores", "2", "--configfile", base, fake=fake).stdout

    steps = write_config(tmp_path / "steps.yaml", {"eval": {"steps": 10}})
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", base, steps, fake=fake)
    assert job_counts(result.stdout) == {"generate_eval_samples": 2, "merge_samples": 2, "fid": 1, "score_shapes": 2,
                                         "clip_score": 1, "clip_score_floor": 1, "report": 1,
                                         "all": 1}  # the samples and the shuffled captions' floor

    vae = write_config(tmp_path / "vae.yaml", {"vae": {"name": str(tmp_path / "vae_b")}})
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", base, vae, fake=fake)
    counts = job_counts(result.stdout)
    assert counts["precompute"] == 2 and counts["stage_samples"] == 4 and counts["generate_eval_samples"] == 2
    assert counts["reference_images"] == 1 and counts["fid_vae"] == 1  # the VAE's reconstructions, 64 px
    assert counts["clip_score_ceiling"] == 1 and "train_clip" not in counts  # its CLIP score; the CLIP stays

    # the held-out loss is watched, not trained on: its settings rerun no stage
    watched = write_config(tmp_path / "watched.yaml", {"validation": {"every": 5, "num": 16}})
    assert "Nothing to be done" in snakemake(workdir, "-n", "--cores", "2", "--configfile", base, watched,
                                             fake=fake).stdout


DATA_RULES = {"download", "convert", "merge_parts", "train_vae", "precompute"}


@pytest.mark.slow  # a stand-in run of the tiny data rules and three dry runs (~15 s)
def test_runs_share_the_data_store(tmp_path, stand_in_microdit):
    fake = stand_in_microdit
    base = write_config(tmp_path / "base.yaml", load("tiny"))
    workdir = tmp_path / "run"
    done = snakemake(workdir, "data", "--cores", "2", "--configfile", base, fake=fake)
    assert done.returncode == 0, done.stderr[-3000:]

    def plan(overlay: dict) -> dict:
        result = snakemake(workdir, "-n", "--cores", "2", "--configfile", base,
                           write_config(tmp_path / "overlay.yaml", overlay), fake=fake)
        assert result.returncode == 0, result.stderr[-3000:]
        return job_counts(result.stdout)

    # another run with other training settings: its own stages and evaluation, on the data already there
    ablation = plan({"run": "ablation", "stages": {"stage1": {"set": {"steps": 99}}}, "eval": {"steps": 10}})
    assert ablation["train"] + ablation["train_with_ema"] == 4 and not DATA_RULES & set(ablation)
    # other data settings make their own: new latents (both datasets: the held-out one too) from the same images
    reseeded = plan({"run": "ablation", "latents": {"seed": 5}})
    assert reseeded["precompute"] == 2 and reseeded["merge_parts"] == 2
    assert not {"download", "convert", "train_vae"} & set(reseeded)
    # another download of the training set: its images, the VAE trained on them and every latents it encodes
    redrawn = plan({"run": "ablation", "downloads": {"synthetic": {"options": {"seed": 3}}}})
    assert {rule: redrawn[rule] for rule in DATA_RULES} == {"download": 1, "convert": 1, "merge_parts": 3,
                                                             "train_vae": 1, "precompute": 2}


@pytest.mark.slow  # a stand-in run of the whole tiny DAG (~15 s)
def test_a_deleted_export_reruns_the_stage_job_that_declares_it(tmp_path, stand_in_microdit):
    config = load("tiny")
    config["eval"]["stages"] = ["stage4"]
    base = write_config(tmp_path / "base.yaml", config)
    workdir = tmp_path / "run"
    assert snakemake(workdir, "--cores", "2", "--configfile", base, fake=stand_in_microdit).returncode == 0
    (workdir / "results" / "tiny" / "train" / "stage4" / "ema.safetensors").unlink()
    # its stage's job exports it again from its last checkpoint, training nothing (tests/train), when the stage is
    # asked for or when a job that reads it runs: here the evaluation, after a change of its settings
    result = snakemake(workdir, "stage4", "-n", "--cores", "2", "--configfile", base, fake=stand_in_microdit)
    assert job_counts(result.stdout) == {"train_with_ema": 1, "stage4": 1} and "stage=stage4" in result.stdout
    steps = write_config(tmp_path / "steps.yaml", {"eval": {"steps": 10}})
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", base, steps, fake=stand_in_microdit)
    assert job_counts(result.stdout) == {"train_with_ema": 1, "stage_samples": 1, "generate_eval_samples": 2,
                                         "merge_samples": 2, "fid": 1, "score_shapes": 2, "clip_score": 1,
                                         "clip_score_floor": 1, "report": 1, "all": 1}


@pytest.mark.slow  # a stand-in run of the whole tiny DAG (~15 s)
def test_a_stage_reruns_for_what_decides_its_weights_only(tmp_path, stand_in_microdit):
    fake = stand_in_microdit
    config = load("tiny")
    config["eval"]["stages"] = ["stage4"]
    stage_yaml = tmp_path / "stage2.yaml"
    stage_yaml.write_text((REPO / config["stages"]["stage2"]["config"]).read_text())
    config["stages"]["stage2"]["config"] = str(stage_yaml)
    base = write_config(tmp_path / "base.yaml", config)
    workdir = tmp_path / "run"
    assert snakemake(workdir, "--cores", "2", "--configfile", base, fake=fake).returncode == 0

    def plan(*overlays: dict) -> str:
        files = [write_config(tmp_path / f"overlay{i}.yaml", overlay) for i, overlay in enumerate(overlays)]
        result = snakemake(workdir, "-n", "--cores", "2", "--configfile", base, *files, fake=fake)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    settings = yaml.safe_load(stage_yaml.read_text())
    # cosmetic: logging, launch, speed switches, in the stage YAML (a newer file) or in the workflow config
    stage_yaml.write_text(yaml.safe_dump({**settings, "log_every": 7, "compile": "blocks"}))
    assert "Nothing to be done" in plan({"stages": {"stage2": {"set": {"progress": True}}},
                                         "slurm": {"train": {"partition": "elsewhere"}}})
    # what decides the weights: stage 2 and the stages chained after it, nothing before it
    stage_yaml.write_text(yaml.safe_dump({**settings, "seed": 7}))
    counts = job_counts(plan())
    assert (counts["train"], counts["train_with_ema"]) == (1, 2)
    assert "precompute" not in counts and counts["report"] == 1
    stage_yaml.write_text(yaml.safe_dump(settings))
    output = plan({"stages": {"stage2": {"set": {"optim.lr": 1e-5}}}})
    counts = job_counts(output)
    assert (counts["train"], counts["train_with_ema"]) == (1, 2)
    assert "stage=stage2" in output and "stage=stage1" not in output


# --------------------------------------------------------------------------------------------- tiny VAE
def test_train_vae_makes_the_configured_latent_channels():
    import torch

    from microdit.tiny_vae import register, train_tiny_vae

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train-vae", "--input", "i", "--out", "o", "--latent-channels", "16"])
    assert args.latent_channels == 16
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    vae, _ = train_tiny_vae([images], steps=1, batch_size=2, lr=1e-3, seed=0, latent_channels=16, log=lambda *_: None)
    assert vae.config.latent_channels == 16
    with torch.no_grad():
        assert vae.encode(images[:1]).latent_dist.mean.shape[1] == 16


def test_train_vae_takes_its_resolutions_in_turn_at_the_same_pixels_a_step(monkeypatch):
    import torch
    from diffusers import AutoencoderKL

    from microdit.tiny_vae import train_tiny_vae

    seen, encode = [], AutoencoderKL.encode

    def recording(self, x, *args, **kwargs):
        if self.training:
            seen.append(tuple(x.shape))
        return encode(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", recording)
    small, large = torch.rand(8, 3, 8, 8) * 2 - 1, torch.rand(8, 3, 16, 16) * 2 - 1
    _, stats = train_tiny_vae([small, large], steps=4, batch_size=8, lr=1e-3, seed=0, log=lambda *_: None)
    assert seen == [(8, 3, 8, 8), (2, 3, 16, 16)] * 2
    assert set(stats["reconstruction_mse"]) == {8, 16}
