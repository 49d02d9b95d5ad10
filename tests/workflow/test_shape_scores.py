"""The drawn-shapes scores as the workflow makes them: the held-out reference images scored by `microdit
score-shapes` in their rule, a real run (the other two scores' commands: tests/workflow/test_workflow_checks.py)."""
import json

import pytest

from test_workflow import miniature_config, snakemake


@pytest.mark.slow
def test_workflow_scores_the_reference_images(tmp_path):
    config = miniature_config(tmp_path)
    snakemake("results/tiny/eval/reference/64px/shapes/reference.json", "--configfile", str(config), "--cores", "2",
              cwd=tmp_path)
    shapes = tmp_path / "results" / "tiny" / "eval" / "reference" / "64px" / "shapes"
    reference = json.loads((shapes / "reference.json").read_text())
    assert reference["num_images"] == 128
    scored = reference["scored"]
    assert scored["kind"] == "reference" and scored["resolution"] == 64
    assert scored["reference"].startswith("results/store/downloads/synthetic-")  # the held-out download's store folder
    assert min(task["accuracy"] for task in reference["tasks"].values()) >= 0.98
    assert len((shapes / "reference.jsonl").read_text().splitlines()) == 128

