"""The Snakemake workflow itself: the paper DAG on a machine with no data, lint, config validation, and a real run
of a miniature of the tiny preset, twice, for byte-identical data artifacts and identical training metrics."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from microdit.data.mds import iter_samples, shard_path, shard_readers
from microdit.store import Store

REPO = Path(__file__).resolve().parents[2]

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(*args, cwd, check=True, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([*SNAKEMAKE, "--directory", str(cwd), *args], capture_output=True, text=True, env=env,
                            timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def test_paper_dag_dry_runs_with_every_rule(tmp_path, paper_filled):
    out = snakemake("-n", "-p", "--profile", str(REPO / "profiles" / "slurm"), "--configfile",
                    str(REPO / "config" / "paper.yaml"), str(paper_filled), cwd=tmp_path).stdout
    sampling = [line for line in out.splitlines() if "microdit generate" in line or "microdit geneval-gen" in line]
    # eval.parts: 8 jobs each for FID-30K's and GenEval's images; compiled: measured 1.9x at 512 px
    assert len(sampling) == 16 and all("--compile blocks" in line and "--parts 8" in line for line in sampling)
    table = out[out.index("Job stats"):].split("\n\n")[0].splitlines()[3:]
    counts = {rule: int(n) for rule, n in (line.split() for line in table) if rule != "total"}
    # 6 downloads (5 training sets + COCO) in 62 parts (cc12m 16, sa1b 20, textcaps 1, jdb 10, diffdb 14, COCO 1),
    # 7 converted datasets in 78 parts (cc12m's twice: all and min-res-512), each encoded per part and its parts'
    # latents merged; 4 stages (3 and 4 keep an EMA); COCO's latents are the held-out loss's; stage 4 evaluated:
    # FID beside its two context values (the reference's halves, its VAE reconstructions), CLIP score, GenEval
    assert counts == {"download": 62, "convert": 78, "precompute": 78, "merge_parts": 7, "train": 2,
                      "train_with_ema": 2, "stage_samples": 4, "eval_captions": 1, "fid_reference_stats": 1,
                      "generate_eval_samples": 8, "merge_samples": 2, "fid": 1, "geneval_metadata": 1,
                      "geneval_generate": 8, "geneval_score": 1, "geneval_summary": 1, "clip_score": 1,
                      "reference_images": 1, "reference_grid": 1, "fid_vae": 1, "report": 1, "all": 1}
    sa1b = [line for line in out.splitlines() if "microdit download sa1b" in line]
    assert sorted(int(line.split("--part ")[1].split()[0]) for line in sa1b) == list(range(20))
    assert all("--parts 20" in line for line in sa1b)
    # each part its own SLURM job, its time limit the part's share of the whole (at least half an hour)
    job = out[out.index("output: results/store/downloads/sa1b-"):].split("\nrule ")[0]
    assert "runtime=144" in job and "mem_mb=16000" in job


def test_lint_is_clean(tmp_path):
    result = snakemake("--lint", "--configfile", str(REPO / "config" / "tiny.yaml"), cwd=tmp_path, check=False)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_invalid_config_is_refused_naming_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["latents"]["resolutions"] = ["sixty-four"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"), cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "sixty-four" in result.stdout + result.stderr and "resolutions" in result.stdout + result.stderr


def miniature_config(tmp_path: Path) -> Path:
    """The tiny preset cut to seconds per step: fewer images, a few VAE and training steps, in-process training."""
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["downloads"]["synthetic"]["options"].update({"num-samples": 48, "shard-size": 24})
    config["vae"]["train"].update({"steps": 3, "batch-size": 8})
    config["eval"]["clip"]["train"]["steps"] = 40  # tells true captions from deranged ones by 35 points
    config["latents"]["batch_size"] = 16
    config["launch"] = {"cluster": "debug"}
    for stage in config["stages"].values():
        stage["set"] = {"steps": 2, "save_every": 1, "progress": False}
    path = tmp_path / "miniature.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def artifact_digests(results: Path) -> dict:
    """sha256 of every data, latent, VAE and weight file under results/ (the store and the run's folder), and the
    training metrics without timings."""
    digests = {}
    patterns = ["store/downloads/**/*.tar", "store/mds/**/*.mds", "store/latents/**/*.mds", "store/vae/*/*.safetensors"]
    for pattern in patterns:
        for path in sorted(results.glob(pattern)):
            digests[str(path.relative_to(results))] = hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted(results.glob("tiny/train/*/final.safetensors")):
        # safetensors stores its metadata in a hash map whose order varies between processes: compare content
        with safe_open(str(path), framework="pt") as f:
            content = hashlib.sha256(json.dumps(sorted((f.metadata() or {}).items())).encode())
            for key in sorted(f.keys()):
                content.update(key.encode() + f.get_tensor(key).numpy().tobytes())
        digests[str(path.relative_to(results))] = content.hexdigest()
    for metrics in sorted(results.glob("tiny/train/*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        digests[str(metrics.relative_to(results))] = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in rows]
    return digests


@pytest.mark.slow
def test_two_runs_give_byte_identical_data_latents_and_weights(tmp_path):
    config = miniature_config(tmp_path)
    runs = []
    # the second run stops at the latents: training adds only the trainer, whose determinism the loop tests check
    for name, targets in (("first", ["stage2"]), ("second", ["data"])):
        workdir = tmp_path / name
        workdir.mkdir()
        snakemake(*targets, "--configfile", str(config), "--cores", "2", cwd=workdir)
        runs.append(artifact_digests(workdir / "results"))
    first, second = runs
    assert any(k.startswith("store/latents/synthetic-") for k in first)
    assert any(k.startswith("store/vae/") and k.endswith("/diffusion_pytorch_model.safetensors") for k in first)
    assert {"tiny/train/stage1/final.safetensors", "tiny/train/stage2/final.safetensors",
            "tiny/train/stage2/metrics.jsonl"} <= set(first)
    assert {k: v for k, v in first.items() if not k.startswith("tiny/train/")} == second

    # forcing a finished stage re-exports it from its last checkpoint without training (a cosmetic change reruns
    # nothing at all: tests/workflow/test_workflow_checks.py)
    workdir, results = tmp_path / "first", tmp_path / "first" / "results"
    run_dir = results / "tiny"
    metrics = run_dir / "train" / "stage2" / "metrics.jsonl"
    trained_lines = metrics.read_text()
    snakemake("stage2", "--forcerun", "results/tiny/train/stage2/final.safetensors", "--configfile", str(config),
              "--cores", "2", cwd=workdir)
    assert metrics.read_text() == trained_lines
    assert artifact_digests(results) == first
    assert not list((run_dir / "train" / "stage2").glob("checkpoints.stale-*"))
    assert yaml.safe_load((run_dir / "train" / "stage2" / "stage.yaml").read_text())["steps"] == 2


def decoded_samples(mds_dir: Path) -> list:
    """Every sample of an MDS dataset in the order its index lists them, each as its fields' bytes."""
    return [{key: value.tobytes() if hasattr(value, "tobytes") else value for key, value in sample.items()}
            for reader in shard_readers(mds_dir) for sample in iter_samples(reader)]


@pytest.mark.slow
def test_two_parts_give_the_latents_of_one(tmp_path, tiny_vae_dir):
    """`parts: 2` splits the download, convert and precompute of a dataset into two jobs each; its merged latents
    are one part's, sample for sample and byte for byte, in the same order. Both are made in one run of the data
    rules (the store's part folders name their part count), with a ready VAE to keep it short."""
    config = yaml.safe_load(miniature_config(tmp_path).read_text())
    config["vae"] = {"latent_channels": 4, "name": str(tiny_vae_dir), "downsample": 4}
    config["downloads"]["synthetic"]["parts"] = 2
    path = tmp_path / "parts.yaml"
    path.write_text(yaml.safe_dump(config))
    merged = Store(config).latents_dir("synthetic")  # .../parts2
    latents = {parts: merged.removesuffix("parts2") + f"parts{parts}" for parts in (1, 2)}
    snakemake(*(f"{folder}/index.json" for folder in latents.values()), "--configfile", str(path), "--cores", "2",
              cwd=tmp_path)
    latents = {parts: tmp_path / folder for parts, folder in latents.items()}
    assert sorted(p.name for p in latents[2].iterdir() if p.is_dir()) == ["0", "1"]
    one, two = decoded_samples(latents[1]), decoded_samples(latents[2])
    assert len(one) == 48 and two == one
    files = {parts: [shard_path(r).read_bytes() for r in shard_readers(latents[parts])] for parts in (1, 2)}
    assert len(files[2]) == 2 and files[2] == files[1]  # the very bytes the trainer reads
