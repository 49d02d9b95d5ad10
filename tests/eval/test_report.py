import base64
import json
import re
from pathlib import Path

import pytest

from eval_helpers import png_bytes, smooth_images
from microdit.errors import UserError
from microdit.report.report import ReportInputs, write_report

@pytest.fixture
def run_dir(tmp_path):
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

def test_report_has_curves_grids_scores_and_costs(run_dir):
    inputs = ReportInputs(
        title="tiny run", stages=["stage1", "stage2"],
        metrics={s: run_dir / f"{s}_metrics.jsonl" for s in ("stage1", "stage2")},
        train_stats={s: run_dir / f"{s}_stats.json" for s in ("stage1", "stage2")},
        grids={"stage1": run_dir / "stage1_grid.png"},
        fid={"stage2": run_dir / "fid.json"}, geneval={"stage2": run_dir / "geneval.json"})
    out = run_dir / "report.html"
    write_report(inputs, out)
    text = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3  # two curve figures and one grid, all inlined
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "no samples" in text  # stage2 has no grid
    assert "held-out loss 0.4500, EMA weights 0.4400 at step 20 (2 evaluations" in text
    assert text.count("held-out loss") == 1
    assert "12.72" in text and "13.26" in text and "0.52" in text  # the paper's column
    assert "42.12" in text and "EfficientNet-Lite0" in text
    # 8 GPUs x 10 h = 80 GPU-h -> $300.00; 4 x 2.5 h = 10 GPU-h -> $37.50; total $337.50 at $3.75
    for number in ("80.00", "$300.00", "10.00", "$37.50", "$337.50", "31.0 %"):
        assert number in text
    assert "$1,890" in text

    write_report(ReportInputs(title="t", stages=["stage1"], train_stats={"stage1": run_dir / "stage1_stats.json"},
                              price_per_gpu_hour=2.0), out)
    text = out.read_text()
    assert "$160.00" in text and "no metrics" in text and "no evaluation results" in text

def test_a_geneval_run_over_some_tasks_shows_no_overall_score(run_dir):
    partial = {"overall": None, "overall_of_present_tasks": 1.0, "tasks": {"single_object": {"accuracy": 1.0}},
               "missing_tasks": ["two_object", "counting", "colors", "position", "color_attr"],
               "correct_images": 1.0, "correct_prompts": 1.0}
    (run_dir / "partial.json").write_text(json.dumps(partial))
    out = run_dir / "report.html"
    write_report(ReportInputs(title="t", stages=["s"], geneval={"s": run_dir / "partial.json"}), out)
    assert out.read_text().count("— (1 of 6 tasks)") == 2  # the scores row and the by-task row
    with pytest.raises(UserError, match="not a GenEval summary"):
        write_report(ReportInputs(title="t", stages=["s"], geneval={"s": run_dir / "fid.json"}), out)


def test_named_but_broken_inputs_are_errors(run_dir):
    with pytest.raises(UserError, match="cannot read"):
        write_report(ReportInputs(title="t", stages=["s"], grids={"s": run_dir / "absent.png"}), run_dir / "r.html")
    with pytest.raises(UserError, match="not in --stages"):
        write_report(ReportInputs(title="t", stages=["s"], grids={"x": run_dir / "a.png"}), run_dir / "r.html")
    assert not (run_dir / "r.html").exists()


def test_a_missing_or_empty_metrics_log_is_named(tmp_path):
    from microdit.report.plots import read_metrics

    with pytest.raises(UserError, match="nowhere.jsonl: cannot read the metrics log"):
        read_metrics(tmp_path / "nowhere.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="empty.jsonl: no training lines"):
        read_metrics(tmp_path / "empty.jsonl")


def test_the_report_says_what_its_numbers_were_made_from(run_dir):
    (run_dir / "stage1.yaml").write_text("steps: 1000\nglobal_batch: 2048\nseed: 18\noptim: {lr: 2.4e-4}\n"
                                         "init: {from: runs/x/stage0, mode: full}\n")
    fid = json.loads((run_dir / "fid.json").read_text())
    (run_dir / "fid.json").write_text(json.dumps({**fid, "checkpoint": "stage1/final.safetensors", "seed": 2024,
                                                  "feature_extractor": "efficientnet_lite0 (timm)"}))
    geneval = json.loads((run_dir / "geneval.json").read_text())
    (run_dir / "geneval.json").write_text(json.dumps({**geneval, "generation": {"images_per_prompt": 4}}))
    out = run_dir / "report.html"
    write_report(ReportInputs(title="t", stages=["stage1"], stage_configs={"stage1": run_dir / "stage1.yaml"},
                              fid={"stage1": run_dir / "fid.json"}, geneval={"stage1": run_dir / "geneval.json"},
                              sample_prompts=["a corgi", "<script>alert(1)</script>"]), out)
    text = out.read_text()
    assert "<h2>Provenance</h2>" in text and "Written by microdit" in text
    assert "<td>optim.lr</td><td>0.00024</td>" in text and "<td>init.from</td><td>runs/x/stage0</td>" in text
    assert "<td>seed</td><td>2024</td>" in text and "stage1/final.safetensors" in text
    assert "<td>feature_extractor</td><td>efficientnet_lite0 (timm)</td>" in text  # which network made the number
    assert "How GenEval of stage1 was made" in text and "<td>images_per_prompt</td><td>4</td>" in text
    assert "<li>a corgi</li>" in text and "<script>" not in text and "&lt;script&gt;" in text


def test_steps_logged_again_by_a_requeued_attempt_count_once(tmp_path):
    from microdit.report.plots import read_metrics

    # attempt 1 logged steps 1-6 and was preempted after its checkpoint at step 4; attempt 2 redid 5-6, went to 8
    lines = [(s, 1.0) for s in range(1, 7)] + [(s, 2.0) for s in range(5, 9)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"step": s, "loss": v, "lr": 1e-4}) + "\n" for s, v in lines))
    df = read_metrics(tmp_path / "m.jsonl")
    assert df["step"].tolist() == list(range(1, 9)) and df["loss"].tolist() == [1.0] * 4 + [2.0] * 4


def test_the_ledger_shows_the_plan_beside_what_was_spent(run_dir):
    from microdit.train.config import load_stage_config, save_stage_config

    cfg = load_stage_config(Path(__file__).resolve().parents[2] / "config" / "stages" / "paper" / "stage1.yaml")
    cfg.steps = 1000
    save_stage_config(cfg, run_dir / "stage1.yaml")
    stats = json.loads((run_dir / "stage1_stats.json").read_text())
    (run_dir / "stage1_stats.json").write_text(json.dumps({
        **stats, "flops_per_image": 282.1e9, "provenance": {"gpus": ["NVIDIA H100 80GB HBM3"] * 8}}))
    out = run_dir / "report.html"
    write_report(ReportInputs(title="t", stages=["stage1", "stage2"], stage_configs={"stage1": run_dir / "stage1.yaml"},
                              train_stats={s: run_dir / f"{s}_stats.json" for s in ("stage1", "stage2")}), out)
    text = out.read_text()
    # 1000 steps x 2048 images at the measured 1244.7 img/s per GPU (an H100's peak is the H200's) = 0.457 GPU-h,
    # $1.71 at $3.75, against the 80 GPU-h ($300) spent; stage2 has no stage config, so no plan
    planned = text[text.index("<h3>Planned and spent</h3>"):]
    assert ("<tr><td>stage1</td><td>H100</td><td>0.46</td><td>80.00</td><td>$1.71</td><td>$300.00</td>"
            "<td>175.04</td></tr>") in planned
    assert "<td>stage2</td>" not in planned
