import json

import numpy as np
import pytest
import torch
from PIL import Image

from microdit.eval.generate import claim_samples, distributed_rank, generate_images, image_name, rank_batches

CAPTIONS = ["a red square", "a blue circle", "two green triangles", "a cat", "a dog on grass"]
SAMPLING = dict(steps=2, guidance=2.0, seed=3, batch_size=2)


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_vae_dir):
    from microdit.models.latent_diffusion import create_latent_diffusion

    torch.manual_seed(0)
    model = create_latent_diffusion(vae_name=str(tiny_vae_dir), text_encoder_name="minilm",
                                    dit_arch="MicroDiT_Nano_2", latent_res=8, pos_interp_scale=0.5)
    return model.eval()


def run(model, out, **overrides):
    return generate_images(model, CAPTIONS, lambda i: out / image_name(i), **{**SAMPLING, **overrides})


def pixels(folder) -> dict:
    return {p.name: np.asarray(Image.open(p), dtype=int) for p in sorted(folder.glob("*.png"))}


def assert_same_images(a: dict, b: dict) -> None:
    """Equal noise, so equal images up to the rounding of kernels that another batch size may pick."""
    assert a.keys() == b.keys()
    assert all(np.abs(a[name] - b[name]).max() <= 1 for name in a)


def test_generation_resumes_and_depends_on_neither_ranks_nor_batch_size(tmp_path, tiny_pipeline):
    out = tmp_path / "samples"
    assert run(tiny_pipeline, out) == {"written": 5, "skipped": 0}
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{i:06d}.png" for i in range(5)]
    original = pixels(out)

    (out / "000002.png").unlink()
    before = {name: (out / name).stat().st_mtime_ns for name in files if name != "000002.png"}
    assert run(tiny_pipeline, out) == {"written": 1, "skipped": 4}  # only the missing image is drawn
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before  # written files untouched
    assert_same_images(pixels(out), original)

    split = tmp_path / "two_ranks"
    results = [run(tiny_pipeline, split, rank=r, world_size=2) for r in (0, 1)]
    assert [r["written"] for r in results] == [3, 2]  # batches {0,1} {4} on rank 0, {2,3} on rank 1
    assert_same_images(pixels(split), original)
    assert run(tiny_pipeline, tmp_path / "batch3", batch_size=3)["written"] == 5
    assert_same_images(pixels(tmp_path / "batch3"), original)
    assert run(tiny_pipeline, tmp_path / "seed4", seed=4)["written"] == 5
    assert any(np.abs(a - b).max() > 1 for a, b in zip(pixels(tmp_path / "seed4").values(), original.values()))


def test_compiling_or_another_batch_size_keeps_the_images_already_drawn(tmp_path):
    from microdit.eval.commands import start_samples

    out, manifest = tmp_path / "samples", {"seed": 1, "checkpoint": "a", "batch_size": 32, "compile": "none"}
    start_samples(out, manifest, rank=0)
    (out / image_name(0)).write_bytes(b"drawn eagerly")
    start_samples(out, {**manifest, "batch_size": 64, "compile": "blocks"}, rank=0)  # kernels' rounding only
    assert (out / image_name(0)).read_bytes() == b"drawn eagerly"
    written = json.loads((out / "generation.json").read_text())
    assert written["compile"] == "blocks"  # and how the images already there were drawn:
    assert written["earlier_drawing_settings"] == [{"batch_size": 32, "compile": "none"}]
    for _ in range(2):  # a rerun, or another rank writing after this one, adds nothing
        start_samples(out, {**manifest, "batch_size": 64, "compile": "blocks"}, rank=0)
    start_samples(out, manifest, rank=0)  # back to the first settings: the second joins the list
    assert json.loads((out / "generation.json").read_text())["earlier_drawing_settings"] == [
        {"batch_size": 32, "compile": "none"}, {"batch_size": 64, "compile": "blocks"}]
    fresh = tmp_path / "fresh"
    start_samples(fresh, {key: value for key, value in manifest.items() if key != "compile"}, rank=0)
    start_samples(fresh, manifest, rank=0)  # a manifest from before `compile` was recorded: the same
    assert "earlier_drawing_settings" not in json.loads((fresh / "generation.json").read_text())
    start_samples(out, {**manifest, "seed": 2}, rank=0)
    assert not (out / image_name(0)).exists()  # other images: moved aside with their manifest and its list
    assert "earlier_drawing_settings" not in json.loads((out / "generation.json").read_text())


def test_images_drawn_by_a_version_with_cuda_graphs_are_resumed(tmp_path):
    """Earlier versions could replay the sampler's network calls from a CUDA graph (dropped: no faster) and wrote
    `cuda_graph` into the manifest; it was never part of the images' claim, so such a folder resumes as it is."""
    from microdit.eval.commands import start_samples

    out, manifest = tmp_path / "samples", {"seed": 1, "checkpoint": "a", "batch_size": 32, "compile": "blocks"}
    # the folder as such a version left it: claimed for the manifest less checkpoint, batch size, compile, cuda_graph
    claim_samples(out, {"seed": 1}, log=lambda msg: None)
    (out / image_name(0)).write_bytes(b"drawn with a CUDA graph")
    old_entry = {"batch_size": 64, "compile": "none", "cuda_graph": False}
    (out / "generation.json").write_text(json.dumps({**manifest, "cuda_graph": True,
                                                     "earlier_drawing_settings": [old_entry]}))
    start_samples(out, manifest, rank=0)
    assert (out / image_name(0)).read_bytes() == b"drawn with a CUDA graph"
    written = json.loads((out / "generation.json").read_text())
    assert "cuda_graph" not in written and written["earlier_drawing_settings"] == [old_entry]
    start_samples(out, {**manifest, "batch_size": 64, "compile": "none"}, rank=0)
    start_samples(out, manifest, rank=0)  # back: 64 / none is the old entry, listed already (with its old key)
    assert json.loads((out / "generation.json").read_text())["earlier_drawing_settings"] == [
        old_entry, {"batch_size": 32, "compile": "blocks"}]
    assert (out / image_name(0)).is_file()


def test_images_of_other_settings_are_moved_aside_not_reused(tmp_path):
    out = tmp_path / "samples"
    claim_samples(out, {"seed": 1}, log=lambda msg: None)
    (out / image_name(0)).write_bytes(b"drawn with seed 1")
    claim_samples(out, {"seed": 1}, log=lambda msg: None)  # same settings: a rerun resumes
    assert (out / image_name(0)).is_file()
    claim_samples(out, {"seed": 2}, log=lambda msg: None)
    assert not (out / image_name(0)).exists()
    (stale,) = tmp_path.glob("samples.stale-*")
    assert (stale / image_name(0)).read_bytes() == b"drawn with seed 1"


def test_other_ranks_wait_for_rank_0_to_claim_the_folder(tmp_path):
    from microdit.errors import UserError

    with pytest.raises(UserError, match="rank 0 did not claim"):
        claim_samples(tmp_path / "samples", {"seed": 1}, rank=1, wait_s=0)
    claim_samples(tmp_path / "samples", {"seed": 1}, rank=0)
    claim_samples(tmp_path / "samples", {"seed": 1}, rank=1, wait_s=0)


def test_ranks_come_from_torchrun_or_an_srun_step_only(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")  # inherited from a 4-task allocation, no srun: one whole process
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed_rank() == (0, 1)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")  # srun -n 4
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert distributed_rank() == (2, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed_rank() == (1, 2) and distributed_rank(0, 3) == (0, 3)


def test_rank_batches_cover_every_index_once():
    for world in (1, 2, 3):
        indices = [i for r in range(world) for _, batch in rank_batches(10, 3, r, world) for i in batch]
        assert sorted(indices) == list(range(10))


def test_impossible_ranks_and_sizes_are_usage_errors(capsys):
    from microdit.cli import main
    from microdit.errors import UserError

    with pytest.raises(UserError, match="rank 3 of 2 processes"):
        distributed_rank(3, 2)  # it would wait for ever for a rank 0 that is not coming
    with pytest.raises(SystemExit) as exit_code:
        main(["generate", "--captions", "c.jsonl", "--out", "o", "--checkpoint", "x", "--batch-size", "0"])
    assert exit_code.value.code == 2 and "--batch-size: expected an integer >= 1" in capsys.readouterr().err
