"""Fixtures for the evaluation tests: the real GenEval metadata and the offline feature network."""
import json
import os
from pathlib import Path

import pytest

from eval_helpers import png_bytes, smooth_images

SHARED = Path(os.environ.get("MICRODIT_SHARED", Path(__file__).resolve().parents[3] / "shared"))


@pytest.fixture(scope="session")
def geneval_metadata() -> Path:
    path = SHARED / "geneval" / "evaluation_metadata.jsonl"
    if not path.is_file():
        pytest.fail(f"GenEval metadata not found at {path} (set MICRODIT_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def efficientnet_extractor():
    from microdit.eval.fid import build_extractor

    return build_extractor("efficientnet-lite0", "clean", "cpu")


@pytest.fixture
def run_dir(tmp_path):
    """Two stages' metrics and stats, a grid, a Fréchet distance and a GenEval summary, as a run leaves them."""
    for stage, (gpus, hours) in {"stage1": (8, 10.0), "stage2": (4, 2.5)}.items():
        lines = [{"step": s, "loss": 1.0 / (1 + s), "lr": 1e-4 * min(1, s / 5)} for s in range(1, 21)]
        if stage == "stage1":  # the held-out loss rides on the training lines of its steps
            lines[9]["val_loss"], lines[19]["val_loss"], lines[19]["val_loss_ema"] = 0.5, 0.45, 0.44
        lines.insert(3, {"step": 4, "val_loss": 0.5})  # a non-training line is ignored
        (tmp_path / f"{stage}_metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (tmp_path / f"{stage}_stats.json").write_text(json.dumps({
            "steps": 1000, "images_seen": 2_048_000, "wall_time_s": hours * 3600, "gpu_count": gpus,
            "mean_img_per_s": 56.9, "mfu": 0.31, "final_loss": 0.1234}))
    (tmp_path / "stage1_grid.png").write_bytes(png_bytes(smooth_images(1, 24, seed=0)[0]))
    (tmp_path / "fid.json").write_text(json.dumps({
        "metric": "Fréchet distance (EfficientNet-Lite0 features)", "value": 42.125, "num_images": 64,
        "resolution": 64, "steps": 30, "guidance": 5.0}))
    tasks = {t: {"accuracy": 0.5} for t in ("single_object", "two_object", "counting", "colors", "position",
                                             "color_attr")}
    (tmp_path / "geneval.json").write_text(json.dumps({"overall": 0.5, "tasks": tasks, "correct_images": 0.25,
                                                       "correct_prompts": 0.75}))
    return tmp_path
