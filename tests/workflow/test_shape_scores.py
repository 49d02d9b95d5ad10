"""The reference images' scores as the workflow makes them, a real run: the drawn-shapes scorer's (`microdit
score-shapes`) and the CLIP score of the preset's own CLIP, trained in its rule (the other scores' commands:
tests/workflow/test_workflow_checks.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_workflow import miniature_config, snakemake


@pytest.mark.slow
def test_workflow_scores_the_reference_images(tmp_path):
    config = miniature_config(tmp_path)
    reference = "results/tiny/eval/reference/64px"
    snakemake(f"{reference}/shapes/reference.json", f"{reference}/clip_reference.json",
              "results/tiny/eval/captions_shuffled.jsonl", "--configfile", str(config), "--cores", "2", cwd=tmp_path)
    shapes = tmp_path / reference / "shapes"
    reference_scores = json.loads((shapes / "reference.json").read_text())
    assert reference_scores["num_images"] == 128
    scored = reference_scores["scored"]
    assert scored["kind"] == "reference" and scored["resolution"] == 64
    assert scored["reference"].startswith("results/store/downloads/synthetic-")  # the held-out download's store folder
    assert min(task["accuracy"] for task in reference_scores["tasks"].values()) >= 0.98
    assert len((shapes / "reference.jsonl").read_text().splitlines()) == 128

    # the CLIP trained on the 48 training images tells the 128 held-out images' captions from deranged ones
    clip = json.loads((tmp_path / reference / "clip_reference.json").read_text())
    assert (clip["num_images"], clip["resolution"]) == (128, 64)
    assert clip["model"] == "local-dir:results/tiny/eval/clip_model"
    microdit = Path(sys.executable).parent / "microdit"
    subprocess.run([microdit, "clip-score", "--reference", clip["reference"], "--resolution", "64", "--captions",
                    "results/tiny/eval/captions_shuffled.jsonl", "--out", "deranged.json", "--model", clip["model"]],
                   cwd=tmp_path, check=True, capture_output=True)
    deranged = json.loads((tmp_path / "deranged.json").read_text())
    assert clip["value"] > deranged["value"] + 20, (clip["value"], deranged["value"])
