"""`microdit plan`: the paper's predicted GPU-hours and dollars from the counted FLOPs and the measured throughput,
and the tiny preset's CPU jobs left unplanned, through the entry point."""
import re

import pytest
import yaml

from microdit.cli import main
from microdit.plan import THROUGHPUT, read_throughput

REPO = THROUGHPUT.parents[2]


def plan(capsys, config, *options) -> dict:
    assert main(["plan", "--configfile", str(config), "--workflow-dir", str(REPO), *options]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        found = re.match(r"(stage\d|eval: \w+ images|total)\s+(\d*)\s+([\d,]*)\s+([\d,.—]*)\s+([\d,.—]+)\s+"
                         r"([\d,.—]+)\s+(\$[\d,]+|—)$", line)
        if found:
            rows[found[1]] = found.groups()[1:]
    return rows


def number(text: str) -> float:
    return float(text.replace(",", "").replace("$", ""))


@pytest.mark.slow
def test_the_paper_plan_rests_on_the_counted_flops_and_the_measured_throughput(capsys):
    measured = {(t["latent_res"], t["mask_ratio"]): t for t in read_throughput()["training"]}
    rows = plan(capsys, REPO / "config" / "paper.yaml", "--gpu", "H200")
    assert list(rows) == ["stage1", "stage2", "stage3", "stage4", "eval: FID images", "eval: GenEval images", "total"]
    for stage, shape in zip(("stage1", "stage2", "stage3", "stage4"), ((32, 0.75), (32, 0.0), (64, 0.75), (64, 0.0))):
        gpus, images, rate, gpu_hours, wall, dollars = rows[stage]
        config = yaml.safe_load((REPO / "config" / "stages" / "paper" / f"{stage}.yaml").read_text())
        assert (int(gpus), number(images)) == (8, config["steps"] * config["global_batch"])
        # on the measured GPU, the trainer's FLOP count gives back the measured rate (the bench counted alike)
        assert abs(number(rate) / measured[shape]["img_per_s"] - 1) < 0.002
        assert abs(number(gpu_hours) - number(images) / number(rate) / 3600) < 0.06
        assert abs(number(wall) * 8 - number(gpu_hours)) < 0.5
        assert abs(number(dollars) - 3.75 * number(gpu_hours)) < 1
    fid = rows["eval: FID images"]
    assert (fid[0], number(fid[1])) == ("1", 30000) and number(rows["eval: GenEval images"][1]) == 553 * 4
    assert abs(number(rows["total"][-1]) - sum(number(r[-1]) for name, r in rows.items() if name != "total")) <= 6


def test_cpu_jobs_are_not_planned(capsys):
    rows = plan(capsys, REPO / "config" / "tiny.yaml")
    assert all(row[0] == "0" and row[2:] == ("—", "—", "—", "—") for name, row in rows.items() if name != "total")
    assert rows["total"][-1] == "$0"


def test_a_shape_never_measured_is_named(tmp_path, capsys):
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["stages"] = {"stage2": {**config["stages"]["stage2"], "set": {"model.train_mask_ratio": 0.5}}}
    config["eval"]["stages"] = ["stage2"]
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(config))
    main(["plan", "--configfile", str(tmp_path / "paper.yaml"), "--workflow-dir", str(REPO)])
    out = capsys.readouterr().out
    assert "stage2: no measurement of MicroDiT_XL_2 at 32x32 latents, mask ratio 0.5" in out
    assert main(["plan", "--configfile", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: cannot read the config" in capsys.readouterr().err
