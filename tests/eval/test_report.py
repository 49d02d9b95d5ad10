import base64
import json
import re
from pathlib import Path

import pytest

from microdit.errors import UserError
from microdit.report.report import ReportInputs, write_report


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
    assert len(images) == 2  # one figure of both stages and one grid (no prompts given: shown whole), inlined
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "no samples from stage2" in text
    assert "<td>stage1</td><td>1–20</td><td>0.0476</td><td>0.4500 (2 evaluations)</td><td>0.4400</td>" in text
    assert "<td>stage2</td><td>21–40</td>" in text  # a fresh clock continues the global step axis
    assert "2e-05 → 0.0001" in text
    assert "<dt>GenEval overall</dt><dd>0.50 (stage2)</dd>" in text  # the summary box
    assert "<dt>cost</dt><dd>90.0 GPU-hours, $337.50</dd>" in text
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


def test_a_cpu_run_ledger_says_so_instead_of_pricing_nothing(run_dir):
    for stage in ("stage1", "stage2"):
        stats = json.loads((run_dir / f"{stage}_stats.json").read_text())
        (run_dir / f"{stage}_stats.json").write_text(json.dumps({**stats, "gpu_count": 0, "mfu": None}))
    out = run_dir / "report.html"
    write_report(ReportInputs(title="t", stages=["stage1", "stage2"],
                              train_stats={s: run_dir / f"{s}_stats.json" for s in ("stage1", "stage2")}), out)
    text = out.read_text()
    assert "A CPU run: no GPU time" in text and "$" not in text.split("Cost ledger")[1].split("Paper:")[0]
    assert "<td>stage1</td><td>600.0</td>" in text and "a CPU run, 750.0 minutes of training" in text
    assert "— %" not in text


def test_stages_sharing_a_clock_and_fresh_ones_line_up_on_one_step_axis():
    import pandas as pd

    from microdit.report.plots import on_global_steps

    frames = {name: pd.DataFrame({"step": steps}) for name, steps in
              (("s1", [2, 4]), ("s2", [5, 6]), ("s3", [1, 2]), ("s4", [3, 4]))}  # s2, s4: full-state resumes
    placed = on_global_steps(frames)
    assert [placed[s]["global_step"].tolist() for s in frames] == [[2, 4], [5, 6], [7, 8], [9, 10]]


def test_a_grid_is_cut_into_its_prompts_images(tmp_path):
    import io

    import numpy as np
    import torch
    from PIL import Image

    from microdit.report.samples import grid_cells
    from microdit.sampling import save_image_grid

    values = (0.0, 0.25, 0.5, 0.75, 1.0)  # 5 images: 3 per row, the last row part empty
    save_image_grid(torch.stack([torch.full((3, 8, 6), v) for v in values]), tmp_path / "grid.png")
    cells = grid_cells((tmp_path / "grid.png").read_bytes(), len(values))
    arrays = [np.asarray(Image.open(io.BytesIO(c))) for c in cells]
    assert [a.shape for a in arrays] == [(8, 6, 3)] * 5
    assert [int(a.min()) for a in arrays] == [int(a.max()) for a in arrays] == [0, 64, 128, 191, 255]
    assert grid_cells((tmp_path / "grid.png").read_bytes(), 7) is None  # not this grid's layout: shown whole


def test_a_geneval_run_over_some_tasks_shows_no_overall_score(run_dir):
    partial = {"overall": None, "overall_of_present_tasks": 1.0, "tasks": {"single_object": {"accuracy": 1.0}},
               "missing_tasks": ["two_object", "counting", "colors", "position", "color_attr"],
               "correct_images": 1.0, "correct_prompts": 1.0}
    (run_dir / "partial.json").write_text(json.dumps(partial))
    out = run_dir / "report.html"
    write_report(ReportInputs(title="t", stages=["s"], geneval={"s": run_dir / "partial.json"}), out)
    assert out.read_text().count("— (1 of 6 tasks)") == 3  # the summary, the scores row and the by-task row
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


def test_the_drawn_shapes_scores_stand_between_their_floor_and_ceilings(run_dir):
    def summary(accuracy: float, correct: float) -> dict:
        tasks = {c: {"accuracy": accuracy} for c in ("background", "color", "shape", "count", "position")}
        return {"tasks": tasks, "correct_images": correct, "num_images": 128}

    for name, accuracy, correct in (("s2", 0.3, 0.0), ("s4", 0.5, 0.125), ("floor4", 0.25, 0.0),
                                    ("reference", 1.0, 1.0), ("vae", 0.97, 0.9)):
        (run_dir / f"{name}.json").write_text(json.dumps(summary(accuracy, correct)))
    out = run_dir / "report.html"
    write_report(ReportInputs(title="t", stages=["stage2", "stage4"],
                              shapes={"stage4": run_dir / "s4.json", "stage2": run_dir / "s2.json"},
                              shapes_floor={"stage4": run_dir / "floor4.json"}, shapes_ceiling={
                                  "reference images, 64 px": run_dir / "reference.json",
                                  "VAE reconstructions, 64 px": run_dir / "vae.json"}), out)
    text = out.read_text()
    table = text[text.index("Prompt following"):]
    rows = re.findall(r"<tr><td>([^<]+)</td>", table)
    assert rows[:5] == ["stage2 samples", "stage4 samples", "stage4, shuffled captions (floor)",
                        "reference images, 64 px (ceiling)", "VAE reconstructions, 64 px (ceiling)"]
    assert "<td>stage4 samples</td>" + "<td>50.0</td>" * 5 + "<td>12.5</td><td>128</td>" in text
    assert "<td>stage4, shuffled captions (floor)</td>" + "<td>25.0</td>" * 5 + "<td>0.0</td>" in text
    assert "<td>VAE reconstructions, 64 px (ceiling)</td>" + "<td>97.0</td>" * 5 + "<td>90.0</td>" in text
    # the headline is the last evaluated stage's
    assert "<dt>drawn shapes, all right</dt><dd>12.5 % (stage4 samples)</dd>" in text


def test_stages_stand_side_by_side_with_the_distance_context_and_clip_only_where_computed(run_dir):
    fid = json.loads((run_dir / "fid.json").read_text())
    for stage, value in (("stage1", 80.5), ("stage2", 42.125)):
        (run_dir / f"fid_{stage}.json").write_text(json.dumps(
            {**fid, "value": value, "checkpoint": f"results/t/train/{stage}/{'ema' if stage == 'stage2' else 'final'}"
                                                  ".safetensors"}))
    (run_dir / "halves.json").write_text(json.dumps({"metric": fid["metric"], "value": 30.25, "num_images": 64,
                                                     "resolution": 64}))
    out = run_dir / "report.html"
    inputs = dict(title="t", stages=["stage1", "stage2"],
                  fid={s: run_dir / f"fid_{s}.json" for s in ("stage1", "stage2")},
                  fd_context={"reference images, 64 px": run_dir / "halves.json"})
    write_report(ReportInputs(**inputs), out)
    text = out.read_text()
    assert "<td>stage1</td><td>raw</td><td>80.50</td><td>64</td>" in text
    assert "<td>stage2</td><td>EMA</td><td>42.12</td><td>64</td>" in text
    assert "<td><em>reference images, 64 px</em></td><td>—</td><td>30.25</td><td>64</td>" in text
    assert "CLIP score" not in text and "Reference images</em>: two random halves" in text
    (run_dir / "clip.json").write_text(json.dumps({"metric": "CLIP score", "value": 27.5, "model": "ViT-L-14"}))
    write_report(ReportInputs(**inputs, clip={"stage2": run_dir / "clip.json"}), out)
    text = out.read_text()
    assert "<td>stage1</td><td>raw</td><td>80.50</td><td>—</td>" in text
    assert "<td>stage2</td><td>EMA</td><td>42.12</td><td>27.50</td>" in text
    assert "<td><em>reference images, 64 px</em></td><td>—</td><td>30.25</td><td>—</td><td>64</td>" in text
    assert "<dt>CLIP score</dt><dd>27.50 (stage2)</dd>" in text
    assert "by ViT-L-14." in text and "train-clip" not in text


def test_the_clip_score_stands_between_its_floor_and_ceilings_sharing_the_distance_context_rows(run_dir):
    fid = json.loads((run_dir / "fid.json").read_text())
    scores = {"fid_stage2": {**fid, "value": 42.0}, "halves": {"metric": fid["metric"], "value": 30.25,
                                                               "num_images": 64, "resolution": 64},
              "clip": {"metric": "CLIP score", "value": 36.4, "model": "local-dir:results/t/eval/clip_model"},
              "floor": {"metric": "CLIP score", "value": 17.3}, "ceiling": {"metric": "CLIP score", "value": 91.8,
                                                                           "num_images": 128, "resolution": 64},
              "vae": {"metric": "CLIP score", "value": 90.1}}
    for name, score in scores.items():
        (run_dir / f"{name}.json").write_text(json.dumps(score))
    out = run_dir / "report.html"
    write_report(ReportInputs(title="t", stages=["stage2"], fid={"stage2": run_dir / "fid_stage2.json"},
                              fd_context={"reference images, 64 px": run_dir / "halves.json"},
                              clip={"stage2": run_dir / "clip.json"}, clip_floor={"stage2": run_dir / "floor.json"},
                              clip_ceiling={"reference images, 64 px": run_dir / "ceiling.json",
                                            "VAE reconstructions, 64 px": run_dir / "vae.json"}), out)
    text = out.read_text()
    assert "<th>CLIP score</th><th>CLIP score, shuffled captions</th>" in text
    assert "<td>stage2</td><td>—</td><td>42.00</td><td>36.40</td><td>17.30</td>" in text
    # one row per label: the Fréchet distance's context and the CLIP ceiling of the same images side by side
    assert ("<td><em>reference images, 64 px</em></td><td>—</td><td>30.25</td><td>91.80</td><td>—</td><td>64</td>"
            in text)
    assert "<td><em>VAE reconstructions, 64 px</em></td><td>—</td><td>—</td><td>90.10</td><td>—</td>" in text
    assert text.count("reference images, 64 px</em>") == 1
    assert "the preset's own small CLIP (<code>microdit train-clip</code>" in text and "Shuffled captions" in text
