"""The evaluation commands chained as the tiny preset's rules call them: captions (and their shuffled twin) ->
images -> statistics (and the two halves' distance) -> score, the reference images and their VAE reconstructions ->
their distance, GenEval summary -> report, on a tiny random checkpoint, offline."""
import argparse
import json

import pandas as pd
import pytest

from eval_helpers import noise_images, smooth_images, write_shards
from microdit.errors import UserError
from microdit.eval import commands, reference_images
from microdit.report import command as report_command


def microdit(*argv: str):
    parser = argparse.ArgumentParser(prog="microdit")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (commands, reference_images, report_command):
        module.register(subparsers)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.mark.slow
def test_tiny_evaluation_chain(tmp_path, tiny_checkpoint, tiny_vae_dir, capsys):
    images = smooth_images(5, 48, seed=0) + noise_images(5, 48, seed=1)
    wds = write_shards(tmp_path / "coco" / "wds", images, [f"picture number {i}" for i in range(10)])
    ev = tmp_path / "results" / "eval"
    microdit("eval-captions", "--source", wds, "--out", ev / "captions.jsonl", "--num", 6, "--seed", 1)
    microdit("eval-captions", "--source", wds, "--out", ev / "shuffled.jsonl", "--num", 6, "--seed", 1,
             "--shuffle", 0)
    rows, shuffled = ([json.loads(line) for line in (ev / name).read_text().splitlines()]
                      for name in ("captions.jsonl", "shuffled.jsonl"))
    # the same images, each with another one's caption: a derangement
    assert [r["image_id"] for r in shuffled] == [r["image_id"] for r in rows]
    assert sorted(r["caption"] for r in shuffled) == sorted(r["caption"] for r in rows)
    assert all(s["caption"] == rows[s["caption_of"]]["caption"] != r["caption"] for r, s in zip(rows, shuffled))
    sampling = ["--checkpoint", tiny_checkpoint, "--steps", 2, "--guidance", 3.0, "--batch-size", 4,
                "--device", "cpu"]
    microdit("generate", "--captions", ev / "captions.jsonl", "--out", ev / "samples", *sampling)
    assert len(list((ev / "samples").glob("*.png"))) == 6
    with pytest.raises(UserError, match="generates 32 px"):
        microdit("generate", "--captions", ev / "captions.jsonl", "--out", ev / "x", *sampling, "--resolution", 64)

    features = ["--features", "efficientnet-lite0", "--device", "cpu"]
    microdit("fid-stats", "--images", wds, "--captions", ev / "captions.jsonl", "--resolution", 32,
             "--out", ev / "ref.npz", "--halves", ev / "fd_halves.json", *features)
    halves = json.loads((ev / "fd_halves.json").read_text())
    assert (halves["num_images"], halves["resolution"]) == (3, 32) and halves["value"] > 0
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

    # the reference images as the statistics see them, and through the VAE, which `fid` reads as it reads samples
    source = ["--source", wds, "--captions", ev / "captions.jsonl", "--resolution", 32]
    microdit("reference-images", *source, "--num", 2, "--out", ev / "grid")
    assert sorted(p.name for p in (ev / "grid").glob("*.png")) == ["000000.png", "000001.png"]
    microdit("reference-images", *source, "--vae", tiny_vae_dir, "--device", "cpu", "--out", ev / "vae")
    microdit("fid", "--samples", ev / "vae", "--reference-stats", ev / "ref.npz", "--out", ev / "fd_vae.json",
             *features)
    vae = json.loads((ev / "fd_vae.json").read_text())
    assert (vae["kind"], vae["num_images"], vae["resolution"]) == ("VAE reconstructions", 6, 32) and vae["value"] > 0

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

    microdit("generate", "--captions", ev / "captions.jsonl", "--out", ev / "samples", *sampling)  # the one deleted
    microdit("report", "--out", tmp_path / "results" / "report.html", "--stages", "stage1",
             "--fid", f"stage1={ev / 'fid.json'}", "--clip", f"stage1={ev / 'clip.json'}",
             "--geneval", f"stage1={ev / 'geneval.json'}", "--fd-context", f"halves={ev / 'fd_halves.json'}",
             "--fd-context", f"vae={ev / 'fd_vae.json'}", "--eval-samples", f"stage1={ev / 'samples'}",
             "--eval-captions", ev / "captions.jsonl", "--grid-reference", ev / "grid", "--grid-captions", 2)
    text = (tmp_path / "results" / "report.html").read_text()
    assert "EfficientNet-Lite0" in text and "no samples" in text
    assert f"<td>stage1</td><td>tiny</td><td>{score['value']:.2f}</td><td>{clip['value']:.2f}</td>" in text
    assert f"<td><em>vae</em></td><td>—</td><td>{vae['value']:.2f}</td>" in text
    grid = text[text.index("Evaluation samples beside"):]
    assert grid.count("<figure>") == 2 and grid.count("<img") == 4  # per caption: its reference, stage1's sample
    assert f"“{rows[1]['caption']}”" in grid
    with pytest.raises(UserError, match="NAME=PATH"):
        microdit("report", "--out", tmp_path / "r.html", "--stages", "s", "--grid", "nopath")
