"""Evaluation images drawn in parts (`eval.parts`): each job draws a range of whole batches into its own folder,
`merge-samples` joins them, and the images and scores are those of one job, byte for byte. Through the `microdit`
entry point on the tiny preset's models (its VAE, MiniLM, MicroDiT_Nano_2), offline on the CPU."""
import json

import numpy as np
import pytest
from PIL import Image

from microdit.cli import main
from microdit.errors import UserError
from microdit.eval.commands import merged_manifest
from microdit.eval.generate import part_range, rank_batches

CAPTIONS = ["two blue circles", "a green triangle", "three red squares", "a yellow circle", "an orange square"]


def microdit(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


def test_parts_are_runs_of_whole_batches_covering_every_image_once():
    for num, batch, parts in [(5, 2, 2), (30000, 32, 8), (2212, 32, 8), (7, 3, 3), (4, 4, 1)]:
        ranges = [part_range(num, batch, k, parts) for k in range(parts)]
        assert [i for r in ranges for i in r] == list(range(num))
        assert all(r.start % batch == 0 for r in ranges)
    drawn = [i for rank in (0, 1) for _, r in rank_batches(10, 2, rank, 2, part=range(4, 10)) for i in r]
    assert sorted(drawn) == list(range(4, 10))  # a part's batches dealt to its ranks
    with pytest.raises(UserError, match="expected 0 <= part < parts"):
        part_range(5, 2, 2, 2)


def test_merging_refuses_parts_of_other_splits_or_settings(tmp_path):
    drawn = {"seed": 1, "num_images": 5}
    parts = [tmp_path / "0", tmp_path / "1"]
    halves = [{**drawn, "part": {"index": k, "of": 2}} for k in (0, 1)]
    assert merged_manifest(halves, parts) == drawn
    with pytest.raises(UserError, match=r"1/generation.json: part .*expected \{'index': 1, 'of': 2\}"):
        merged_manifest([halves[0], halves[0]], parts)
    with pytest.raises(UserError, match="1/generation.json: drawn with other settings"):
        merged_manifest([halves[0], {**halves[1], "seed": 2}], parts)


@pytest.mark.slow  # three generations and two scores of 5 images on the CPU (~30 s)
def test_two_parts_give_the_images_and_score_of_one(tmp_path, tiny_checkpoint):
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"index": i, "caption": c}) + "\n" for i, c in enumerate(CAPTIONS)))
    reference = tmp_path / "reference"
    reference.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(reference / f"{i}.png")
    features = ["--features", "efficientnet-lite0", "--device", "cpu"]
    microdit("fid-stats", "--images", reference, "--resolution", 32, "--out", tmp_path / "ref.npz", *features)
    sampling = ["--checkpoint", tiny_checkpoint, "--steps", 2, "--guidance", 3.0, "--seed", 7, "--batch-size", 2,
                "--device", "cpu"]
    scores = {}
    for parts in (1, 2):
        run = tmp_path / f"parts{parts}"
        folders = [run / "sample_parts" / str(k) for k in range(parts)]
        for k, folder in enumerate(folders):
            microdit("generate", "--captions", captions, "--out", folder, "--part", k, "--parts", parts, *sampling)
        microdit("merge-samples", *[a for folder in folders for a in ("--part", folder)], "--out", run / "samples")
        microdit("fid", "--samples", run / "samples", "--reference-stats", tmp_path / "ref.npz", "--out",
                 run / "fid.json", *features)
        scores[parts] = json.loads((run / "fid.json").read_text())
    one, two = tmp_path / "parts1" / "samples", tmp_path / "parts2" / "samples"
    assert sorted(p.name for p in two.glob("*.png")) == [f"{i:06d}.png" for i in range(5)]
    assert [len(list((tmp_path / "parts2" / "sample_parts" / k).glob("*.png"))) for k in "01"] == [2, 3]
    assert all((one / p.name).read_bytes() == p.read_bytes() for p in two.glob("*.png"))
    assert (one / "generation.json").read_text() == (two / "generation.json").read_text()
    assert scores[1].pop("samples") != scores[2].pop("samples")
    assert scores[1] == scores[2] and scores[1]["value"] > 0
