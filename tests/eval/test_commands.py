"""The evaluation commands chained as the tiny preset's rules call them: captions -> images -> statistics -> score
-> GenEval summary -> report, on a tiny random checkpoint, offline."""
import argparse
import json

import pandas as pd
import pytest

from eval_helpers import noise_images, smooth_images, write_shards
from microdit.errors import UserError
from microdit.eval import commands


def microdit(*argv: str):
    parser = argparse.ArgumentParser(prog="microdit")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.mark.slow
def test_tiny_evaluation_chain(tmp_path, tiny_checkpoint, capsys):
    images = smooth_images(5, 48, seed=0) + noise_images(5, 48, seed=1)
    wds = write_shards(tmp_path / "coco" / "wds", images, [f"picture number {i}" for i in range(10)])
    ev = tmp_path / "results" / "eval"
    microdit("eval-captions", "--source", wds, "--out", ev / "captions.jsonl", "--num", 6, "--seed", 1)
    sampling = ["--checkpoint", tiny_checkpoint, "--steps", 2, "--guidance", 3.0, "--batch-size", 4,
                "--device", "cpu"]
    microdit("generate", "--captions", ev / "captions.jsonl", "--out", ev / "samples", *sampling)
    assert len(list((ev / "samples").glob("*.png"))) == 6
    with pytest.raises(UserError, match="generates 32 px"):
        microdit("generate", "--captions", ev / "captions.jsonl", "--out", ev / "x", *sampling, "--resolution", 64)

    features = ["--features", "efficientnet-lite0", "--device", "cpu"]
    microdit("fid-stats", "--images", wds, "--captions", ev / "captions.jsonl", "--resolution", 32,
             "--out", ev / "ref.npz", *features)
    microdit("fid", "--samples", ev / "samples", "--reference-stats", ev / "ref.npz", "--out", ev / "fid.json",
             *features)
    score = json.loads((ev / "fid.json").read_text())
    assert score["metric"] == "Fréchet distance (EfficientNet-Lite0 features)" and score["value"] > 0
    assert (score["num_images"], score["resolution"], score["steps"], score["guidance"], score["mode"]) == \
        (6, 32, 2, 3.0, "clean")
    assert len(score["checkpoint_sha256"]) == 64 and score["feature_extractor"].startswith("efficientnet_lite0")

    microdit("clip-score", "--samples", ev / "samples", "--captions", ev / "captions.jsonl", "--out",
             ev / "clip.json", "--model", "ViT-B-32", "--pretrained", "", "--device", "cpu")  # random weights
    clip = json.loads((ev / "clip.json").read_text())
    assert clip["metric"] == "CLIP score" and 0 <= clip["value"] <= 100 and clip["num_images"] == 6

    (ev / "samples" / "000003.png").unlink()
    with pytest.raises(UserError, match="5 of 6 images"):
        microdit("fid", "--samples", ev / "samples", "--reference-stats", ev / "ref.npz", "--out", ev / "f.json",
                 *features)

    pd.DataFrame([{"tag": tag, "prompt": tag, "correct": i % 2 == 0, "metadata": json.dumps({"p": tag}),
                   "filename": f"{i}.png", "reason": "", "details": "{}"}
                  for i, tag in enumerate(["single_object", "two_object"] * 2)]).to_json(
        ev / "results.jsonl", orient="records", lines=True)
    microdit("geneval-summary", "--results", ev / "results.jsonl", "--out", ev / "geneval.json")
    assert json.loads((ev / "geneval.json").read_text())["tasks"]["single_object"]["accuracy"] == 1.0
    (ev / "generation.json").write_text(json.dumps({"num_prompts": 2, "images_per_prompt": 4}))
    with pytest.raises(UserError, match="scores 4 images, but .* draws 8"):
        microdit("geneval-summary", "--results", ev / "results.jsonl", "--out", ev / "g.json",
                 "--manifest", ev / "generation.json")
    assert not (ev / "g.json").exists()

    microdit("report", "--out", tmp_path / "results" / "report.html", "--stages", "stage1",
             "--fid", f"stage1={ev / 'fid.json'}", "--geneval", f"stage1={ev / 'geneval.json'}")
    text = (tmp_path / "results" / "report.html").read_text()
    assert "EfficientNet-Lite0" in text and "no samples" in text
    with pytest.raises(UserError, match="NAME=PATH"):
        microdit("report", "--out", tmp_path / "r.html", "--stages", "s", "--grid", "nopath")
