"""Every summary JSON and every checkpoint records what made it: the data, training and evaluation commands of the
tiny preset run through `microdit`'s entry point on a few drawn images, inside a pretend SLURM job."""
import json
import subprocess
import tempfile

import pandas as pd
import pytest
import torch

from microdit import provenance as prov
from microdit.checkpoint import read_checkpoint
from microdit.cli import main
from microdit.train.config import save_stage_config, stage_config_from_dict

LIBRARIES = {"microdit", "torch", "diffusers", "open_clip", "streaming"}


def microdit(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


def check(record: dict, where: str) -> None:
    assert set(record) == {"commit", "dirty", "versions", "cuda", "gpus", "host", "slurm"}, where
    head = subprocess.run(["git", "-C", str(prov.source_root()), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert record["commit"] == head.stdout.strip() and isinstance(record["dirty"], bool), where
    assert set(record["versions"]) == LIBRARIES and record["versions"]["torch"] == torch.__version__.split("+")[0]
    assert record["slurm"] == {"job_id": "4242", "array_job_id": "4240", "array_task_id": "2"}, where
    assert record["host"] and record["gpus"] == ([] if not torch.cuda.is_available() else record["gpus"]), where


@pytest.mark.slow
def test_every_summary_and_export_records_its_provenance(tmp_path, tiny_vae_dir, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # streaming's file locks, this test's own
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    wds, mds, latents = tmp_path / "wds", tmp_path / "mds", tmp_path / "latents"
    microdit("download", "synthetic", "--out", wds, "--summary", tmp_path / "download.json", "--num-samples", 6,
             "--shard-size", 6, "--min-size", 32, "--max-size", 40)
    microdit("convert", "--input", wds, "--out", mds, "--min-side", 32, "--resize-to", 32)
    microdit("precompute", "--input", mds, "--out", latents, "--vae", tiny_vae_dir, "--text-encoder", "minilm",
             "--resolutions", 32, "--max-length", 4, "--device", "cpu")

    stage = tmp_path / "stage"
    cfg = {"name": "provenance", "out_dir": str(stage), "steps": 2, "global_batch": 2, "micro_batch": 2, "seed": 7,
           "precision": "fp32", "save_every": 1, "progress": False, "launch": {"cluster": "debug"},
           "model": {"arch": "MicroDiT_Nano_2", "latent_res": 8, "caption_channels": 384,
                     "overrides": {"depth": 2, "patch_mixer_depth": 1}},
           "data": {"kind": "mds", "caption_len": 4, "vae": str(tiny_vae_dir), "text_encoder": "minilm",
                    "options": {"datadirs": [str(latents)], "resolution": 32, "num_workers": 0}},
           "optim": {"lr": 1e-3}, "schedule": {"kind": "constant"}}
    save_stage_config(stage_config_from_dict(cfg), tmp_path / "stage.yaml")
    microdit("train", "--config", tmp_path / "stage.yaml")

    ev = tmp_path / "eval"
    microdit("eval-captions", "--source", wds, "--out", ev / "captions.jsonl", "--num", 3)
    microdit("generate", "--captions", ev / "captions.jsonl", "--out", ev / "samples", "--checkpoint",
             stage / "final.safetensors", "--steps", 1, "--device", "cpu")
    features = ["--features", "efficientnet-lite0", "--device", "cpu"]
    microdit("fid-stats", "--images", wds, "--resolution", 32, "--out", ev / "ref.npz", *features)
    microdit("fid", "--samples", ev / "samples", "--reference-stats", ev / "ref.npz", "--out", ev / "fid.json",
             *features)
    pd.DataFrame([{"tag": "single_object", "prompt": "a cat", "correct": True, "metadata": "{}", "filename": "0.png",
                   "reason": "", "details": "{}"}]).to_json(ev / "results.jsonl", orient="records", lines=True)
    microdit("geneval-summary", "--results", ev / "results.jsonl", "--out", ev / "geneval.json")

    summaries = [tmp_path / "download.json", mds / "convert_stats.json", latents / "precompute_stats.json",
                 stage / "train_stats.json", ev / "fid.json", ev / "geneval.json"]
    for path in summaries:
        check(json.loads(path.read_text())["provenance"], str(path))
    _, metadata = read_checkpoint(stage / "final.safetensors")
    check(json.loads(metadata["provenance"]), "final.safetensors")
    full_state = torch.load(next(stage.glob("checkpoints/*.pt")), weights_only=True)
    check(full_state["provenance"], "full training state")


def test_no_git_or_no_checkout_is_recorded_as_unknown(monkeypatch, tmp_path):
    prov.code_state.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    assert prov.code_state() == {"commit": "unknown", "dirty": "unknown"}
    prov.code_state.cache_clear()
    monkeypatch.undo()
    monkeypatch.setattr(prov, "source_root", lambda: tmp_path)  # a folder git knows nothing of
    assert prov.code_state() == {"commit": "unknown", "dirty": "unknown"}
    prov.code_state.cache_clear()
