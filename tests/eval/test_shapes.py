"""The drawn-shapes scorer through `microdit score-shapes`: it reads the held-out reference images as their captions
say, and scores images that contradict their captions as wrong, in the category they contradict."""
import dataclasses
import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from microdit import cli
from microdit.data import synthetic
from microdit.eval.generate import image_name
from microdit.eval.shapes import CATEGORIES, Scene, parse_caption

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def microdit(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """The tiny preset's held-out download (seed 1, 128 images of 96 px, as config/tiny.yaml draws them) and its
    evaluation captions."""
    root = tmp_path_factory.mktemp("held_out")
    assert microdit("download", "synthetic", "--out", root / "wds", "--num-samples", 128, "--shard-size", 64,
                    "--seed", 1, "--min-size", 96, "--max-size", 96) == 0
    assert microdit("eval-captions", "--source", root / "wds", "--out", root / "captions.jsonl", "--num", 128) == 0
    return root


@pytest.mark.parametrize("resolution", [64, 32])  # the tiny preset's two resolutions
def test_reference_images_score_at_least_98_percent_everywhere(held_out, tmp_path, resolution):
    out, results = tmp_path / "reference.json", tmp_path / "reference.jsonl"
    assert microdit("score-shapes", "--captions", held_out / "captions.jsonl", "--reference", held_out / "wds",
                    "--resolution", resolution, "--out", out, "--results", results) == 0
    summary = json.loads(out.read_text())
    assert summary["num_images"] == 128 and summary["scored"]["kind"] == "reference"
    assert set(summary["tasks"]) == set(CATEGORIES)
    assert all(task["accuracy"] >= 0.98 for task in summary["tasks"].values()), summary["tasks"]
    assert all(summary["groups"][g][c]["accuracy"] >= 0.98 for g in "ab" for c in summary["groups"][g])
    assert len(results.read_text().splitlines()) == 128


def wrong_image(index: int, change) -> tuple[np.ndarray, str]:
    """Image `index` of seed 1 drawn from a changed scene, with the caption of the true scene."""
    scene = synthetic.sample_scene

    def changed(rng):
        return change(*scene(rng))

    synthetic.sample_scene = changed
    try:
        data, _, _ = synthetic.render(index, 1, 64, 64)
    finally:
        synthetic.sample_scene = scene
    _, caption, _ = synthetic.render(index, 1, 64, 64)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), caption


def other_color(a, relation, b, background):
    color = next(c for c in synthetic.COLORS if c not in (a.color, b.color))
    return dataclasses.replace(a, color=color), relation, b, background


def other_count(a, relation, b, background):
    return dataclasses.replace(a, count=a.count % 3 + 1), relation, b, background


def swapped_sides(a, relation, b, background):
    return a, OPPOSITE[relation], b, background


@pytest.mark.parametrize("change, category", [(other_color, "color"), (other_count, "count"),
                                              (swapped_sides, "position")])
def test_images_that_contradict_their_caption_score_wrong(tmp_path, change, category):
    samples, rows = tmp_path / "samples", []
    samples.mkdir()
    for index in range(8):
        image, caption = wrong_image(index, change)
        Image.fromarray(image).save(samples / image_name(index))
        rows.append({"index": index, "caption": caption})
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert microdit("score-shapes", "--captions", tmp_path / "captions.jsonl", "--samples", samples,
                    "--out", tmp_path / "s.json") == 0
    tasks = json.loads((tmp_path / "s.json").read_text())["tasks"]
    assert tasks[category]["correct"] == 0, tasks
    assert tasks["background"]["correct"] == 8


def test_vae_reconstructions_are_scored(held_out, tmp_path):
    from microdit.tiny_vae import save_tiny_vae

    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join((held_out / "captions.jsonl").read_text().splitlines(keepends=True)[:4]))
    out = tmp_path / "vae.json"
    assert microdit("score-shapes", "--captions", captions, "--reference", held_out / "wds",
                    "--vae", save_tiny_vae(tmp_path / "vae"), "--out", out) == 0
    summary = json.loads(out.read_text())
    assert summary["scored"]["kind"] == "vae" and summary["num_images"] == 4


def test_bad_input_is_one_line(held_out, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"index": 0, "image_id": "x", "caption": "a photo of a cat"}) + "\n")
    assert microdit("score-shapes", "--captions", captions, "--samples", tmp_path, "--out", tmp_path / "s.json") == 2
    assert "images missing" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / image_name(0))
    assert microdit("score-shapes", "--captions", captions, "--samples", tmp_path, "--out", tmp_path / "s.json") == 2
    assert "not a drawn-shapes caption" in capsys.readouterr().err


def test_every_drawn_caption_parses_back_to_its_scene():
    for seed in range(200):
        scene = synthetic.sample_scene(random.Random(seed))
        assert parse_caption(synthetic.caption_of(*scene)) == Scene(*scene)
