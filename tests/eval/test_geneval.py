import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from microdit.errors import UserError
from microdit.eval import geneval


class StubModel:
    """Stands in for the sampler where only the layout is under test: 8x8 grey images."""

    def __init__(self):
        self.prompts = []

    def generate(self, prompt, num_inference_steps, guidance_scale, seed):
        self.prompts += prompt
        return torch.full((len(prompt), 3, 8, 8), 0.5)


def test_metadata_is_pinned_by_sha256(tmp_path, geneval_metadata):
    out = geneval.fetch_metadata(tmp_path / "evaluation_metadata.jsonl", source=str(geneval_metadata))
    assert out.read_bytes() == geneval_metadata.read_bytes()
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(geneval_metadata.read_bytes().replace(b"bench", b"bench!", 1))
    with pytest.raises(UserError, match="not the pinned"):
        geneval.fetch_metadata(tmp_path / "other.jsonl", source=str(tampered))
    assert not (tmp_path / "other.jsonl").exists()


def test_layout_writer_on_the_real_metadata(tmp_path, geneval_metadata):
    metadata = geneval.read_metadata(geneval_metadata)
    assert len(metadata) == geneval.NUM_PROMPTS
    model, root = StubModel(), tmp_path / "geneval"
    stats = geneval.generate_geneval(model, metadata, root, steps=1, guidance=1.0, seed=0, batch_size=256)
    assert stats == {"written": 553 * 4, "skipped": 0}
    dirs = sorted(p.name for p in root.iterdir())
    assert dirs == [f"{i:05d}" for i in range(553)]
    lines = geneval_metadata.read_text().splitlines()
    for index in (0, 200, 552):
        folder = root / f"{index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == json.loads(lines[index])
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png",
                                                                          "0003.png"]
    assert model.prompts[:5] == [metadata[0]["prompt"]] * 4 + [metadata[1]["prompt"]]
    # a rerun finds everything in place
    rerun = geneval.generate_geneval(StubModel(), metadata, root, steps=1, guidance=1.0, seed=0, batch_size=256)
    assert rerun == {"written": 0, "skipped": 553 * 4}


def write_results(path, rows):
    """rows: (tag, prompt, [correct per image]) -> results.jsonl in the evaluator's format."""
    records = []
    for tag, prompt, marks in rows:
        metadata = json.dumps({"tag": tag, "prompt": prompt})
        for i, correct in enumerate(marks):
            records.append({"filename": f"{prompt}/{i:04d}.png", "tag": tag, "prompt": prompt, "correct": correct,
                            "reason": "" if correct else "wrong", "metadata": metadata, "details": "{}"})
    pd.DataFrame(records).to_json(path, orient="records", lines=True)


def test_summary_matches_hand_computed_scores(tmp_path):
    path = tmp_path / "results.jsonl"
    write_results(path, [
        ("single_object", "a cat", [True, True, True, False]),        # task: 7/8 = 0.875
        ("single_object", "a dog", [True, True, True, True]),
        ("two_object", "a cat and a dog", [False, False, False, False]),  # 1/8 = 0.125
        ("two_object", "a cup and a car", [True, False, False, False]),
        ("counting", "two cats", [True, True, False, False]),         # 2/4 = 0.5
        ("colors", "a red car", [True, True, True, True]),            # 4/4 = 1.0
        ("position", "a cat left of a dog", [False, False, False, False]),  # 0/4 = 0.0
        ("color_attr", "a red cat and a blue dog", [True, False, False, False]),  # 1/4 = 0.25
    ])
    summary = geneval.summarize(path)
    expected = {"single_object": 0.875, "two_object": 0.125, "counting": 0.5, "colors": 1.0, "position": 0.0,
                "color_attr": 0.25}
    assert {tag: t["accuracy"] for tag, t in summary["tasks"].items()} == pytest.approx(expected)
    assert summary["overall"] == pytest.approx(2.75 / 6)  # unweighted over tasks, not 15/32 over images
    assert summary["correct_images"] == pytest.approx(15 / 32)  # 7 + 1 + 2 + 4 + 0 + 1
    assert summary["correct_prompts"] == pytest.approx(6 / 8)  # all but "a cat and a dog" and "position"
    assert (summary["num_images"], summary["num_prompts"], summary["missing_tasks"]) == (32, 8, [])


def test_summary_of_some_tasks_has_no_overall_score(tmp_path):
    path = tmp_path / "results.jsonl"
    write_results(path, [("single_object", "a cat", [True, True, True, True])])  # e.g. --num-prompts 50
    summary = geneval.summarize(path)
    assert summary["overall"] is None and summary["overall_of_present_tasks"] == 1.0
    assert summary["missing_tasks"] == ["two_object", "counting", "colors", "position", "color_attr"]


def test_summary_rejects_files_that_are_not_results(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"filename": "x.png"}\n')
    with pytest.raises(UserError, match="missing columns"):
        geneval.summarize(path)


def test_geneval_environment_is_upstreams_stack():
    import yaml

    env = yaml.safe_load((Path(__file__).resolve().parents[2] / "envs" / "geneval.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "mmcv-full==1.7.1" in pip and "mmdet==2.27.0" in pip and "open-clip-torch==2.20.0" in pip
