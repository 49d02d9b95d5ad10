import pytest
import torch

from microdit.eval.generate import generate_images, image_name, rank_batches

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
    return generate_images(model, CAPTIONS, lambda i: out / image_name(i), log=lambda msg: None,
                           **{**SAMPLING, **overrides})


def test_generation_resumes_and_is_independent_of_ranks(tmp_path, tiny_pipeline):
    out = tmp_path / "samples"
    assert run(tiny_pipeline, out) == {"written": 5, "skipped": 0}
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{i:06d}.png" for i in range(5)]
    original = {name: (out / name).read_bytes() for name in files}

    (out / "000002.png").unlink()
    before = {name: (out / name).stat().st_mtime_ns for name in files if name != "000002.png"}
    assert run(tiny_pipeline, out) == {"written": 1, "skipped": 4}
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before  # written files untouched
    assert (out / "000002.png").read_bytes() == original["000002.png"]  # its batch is redrawn identically

    split = tmp_path / "two_ranks"
    results = [run(tiny_pipeline, split, rank=r, world_size=2) for r in (0, 1)]
    assert [r["written"] for r in results] == [3, 2]  # batches {0,1} {4} on rank 0, {2,3} on rank 1
    assert {p.name: p.read_bytes() for p in split.iterdir()} == original


def test_rank_batches_cover_every_index_once():
    for world in (1, 2, 3):
        indices = [i for r in range(world) for _, batch in rank_batches(10, 3, r, world) for i in batch]
        assert sorted(indices) == list(range(10))
