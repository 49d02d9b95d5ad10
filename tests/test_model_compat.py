"""The denoiser matches the authors' parameter names/shapes and reproduces their forward pass numerically."""
import json

import numpy as np
import pytest
import torch

from microdit.models.dit import MicroDiT, MicroDiTConfig, create_dit
from microdit.models.layers import ExpertChoiceMoE, sincos_pos_embed_2d, timestep_features

MANIFESTS = ["microdit_xl2_c4_r32.json", "microdit_xl2_c4_r64.json", "microdit_xl2_c16_r64.json"]


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_xl_state_dict_matches_manifest(reference_dir, manifest):
    ref = json.loads((reference_dir / manifest).read_text())
    cfg = ref["config"]
    with torch.device("meta"):
        dit = create_dit(cfg["arch"], input_size=cfg["input_size"], in_channels=cfg["in_channels"],
                         caption_channels=cfg["caption_channels"], pos_interp_scale=cfg["pos_interp_scale"])
    ours = {k: list(v.shape) for k, v in dit.state_dict().items()}
    expected = {**ref["buffers"], **ref["params"]}
    assert list(ours) == ref["state_dict_order"] and sorted(ours) == sorted(expected)
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}
    assert sum(p.numel() for p in dit.parameters()) == ref["param_count_total"]
    blocks = [i for i, b in enumerate(dit.blocks) if isinstance(b.mlp, ExpertChoiceMoE)]
    assert [f"blocks.{i}.mlp" for i in blocks] == [m["name"] for m in ref["moe_layers"] if m["name"].startswith("b")]


def test_tiny_parameter_count():
    with torch.device("meta"):
        dit = create_dit("MicroDiT_Tiny_2")
    assert sum(p.numel() for p in dit.parameters()) == 200_692_752


def test_nano_is_cpu_sized_and_keeps_every_feature():
    dit = create_dit("MicroDiT_Nano_2")
    assert 1e6 < sum(p.numel() for p in dit.parameters()) < 5e6
    assert any(isinstance(b.mlp, ExpertChoiceMoE) for b in dit.blocks)
    assert any(isinstance(b.mlp, ExpertChoiceMoE) for b in dit.patch_mixer)
    assert isinstance(dit.patch_mixer_map_xin, torch.nn.Sequential)
    assert len({b.attn.qkv.weight.shape for b in dit.blocks}) > 1  # layer-wise scaling


@pytest.fixture(scope="module")
def fixture(reference_dir):
    return torch.load(reference_dir / "dit_tiny_fixture.pt", weights_only=True)


@pytest.fixture(scope="module")
def fixture_model(fixture):
    c = fixture["config"]
    qkv, ffn = c["qkv_multipliers"], c["ffn_multipliers"]
    assert np.allclose(np.linspace(qkv[0], qkv[-1], c["depth"]), qkv)
    assert np.allclose(np.linspace(ffn[0], ffn[-1], c["depth"]), ffn)
    cfg = MicroDiTConfig(
        input_size=c["input_size"], patch_size=c["patch_size"], in_channels=c["in_channels"], dim=c["dim"],
        depth=c["depth"], head_dim=c["head_dim"], multiple_of=c["multiple_of"],
        caption_channels=c["caption_channels"], pos_interp_scale=c["pos_interp_scale"], norm_eps=c["norm_eps"],
        qkv_ratio_range=(qkv[0], qkv[-1]), ffn_ratio_range=(ffn[0], ffn[-1]),
        num_experts=c["num_experts"], expert_capacity=c["expert_capacity"], experts_every_n=c["experts_every_n"],
        patch_mixer_depth=c["patch_mixer_depth"], patch_mixer_dim=c["patch_mixer_dim"],
        patch_mixer_qkv_ratio=c["patch_mixer_qkv_ratio"], patch_mixer_mlp_ratio=c["patch_mixer_mlp_ratio"])
    model = MicroDiT(cfg)
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model.eval()


@pytest.mark.parametrize("name,call", [
    ("plain", lambda m, x, t, y: m(x, t, y)),
    ("cfg4", lambda m, x, t, y: m(x, t, y, cfg=4.0)),
    ("cfg4_scalar_t", lambda m, x, t, y: m(x, t[:1], y, cfg=4.0)),
])
def test_fixture_outputs(fixture, fixture_model, name, call):
    inputs = fixture["inputs"]
    with torch.no_grad():
        out = call(fixture_model, inputs["x"], inputs["t"], inputs["y"])["sample"]
    torch.testing.assert_close(out, fixture["outputs"][name], atol=1e-5, rtol=0)


def test_fixture_masked_output(fixture, fixture_model):
    inputs, expected = fixture["inputs"], fixture["outputs"]
    torch.manual_seed(123)
    with torch.no_grad():
        out = fixture_model(inputs["x"], inputs["t"], inputs["y"], mask_ratio=0.5)
    torch.testing.assert_close(out["mask"], expected["mask0.5_seed123_mask"].float(), atol=0, rtol=0)
    torch.testing.assert_close(out["sample"], expected["mask0.5_seed123"], atol=1e-5, rtol=0)


def test_fixture_embeddings(fixture, fixture_model):
    torch.testing.assert_close(sincos_pos_embed_2d(16, 4, 1.0), fixture["pos_embed_D16_G4_scale1"], atol=1e-6, rtol=0)
    torch.testing.assert_close(sincos_pos_embed_2d(16, 8, 2.0), fixture["pos_embed_D16_G8_scale2"], atol=1e-6, rtol=0)
    torch.testing.assert_close(timestep_features(torch.tensor([-1.2, 0.0, 0.7]), 16),
                               fixture["timestep_embedding_dim16_t[-1.2,0,0.7]"], atol=1e-6, rtol=0)
    fresh = fixture_model.pos_embed.clone()
    fixture_model.reset_pos_embed()
    torch.testing.assert_close(fixture_model.pos_embed, fresh, atol=1e-6, rtol=0)


@pytest.mark.parametrize("tokens,capacity", [(16, 2.0), (64, 2.0), (30, 1.0)])
def test_index_dispatch_equals_one_hot(tokens, capacity):
    torch.manual_seed(0)
    moe = ExpertChoiceMoE(dim=24, hidden_dim=40, multiple_of=8, num_experts=4, capacity=capacity)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, tokens, 24, requires_grad=True)
    ours = moe(x)
    moe.dispatch = "one_hot"  # the original's dense formulation: one-hot dispatch tensor and einsums
    reference = moe(x)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    grad_ours = torch.autograd.grad(ours.square().sum(), [x, moe.w1])
    grad_ref = torch.autograd.grad(reference.square().sum(), [x, moe.w1])
    for a, b in zip(grad_ours, grad_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_init_output_is_zero_and_cross_attention_live():
    torch.manual_seed(0)
    dit = create_dit("MicroDiT_Nano_2", input_size=8)
    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 77, 1024)
    assert dit(x, torch.zeros(2), y)["sample"].abs().max() == 0
    assert dit.blocks[0].cross_attn.proj.weight.abs().sum() > 0
    assert dit.x_embedder.proj.bias.abs().sum() == 0  # SPEC §7.8 fixed: conv bias zero like every other bias


def test_masked_forward_restores_zero_tokens_and_keeps_shape():
    torch.manual_seed(0)
    dit = create_dit("MicroDiT_Nano_2", input_size=8)
    for p in dit.final_layer.parameters():
        torch.nn.init.normal_(p, std=0.1)
    out = dit(torch.randn(2, 4, 8, 8), torch.zeros(2), torch.randn(2, 1, 77, 1024), mask_ratio=0.75)
    assert out["sample"].shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"latents of \(4, 16\): this model takes 8 x 8"):
        dit(torch.randn(2, 4, 4, 16), torch.zeros(2), torch.randn(2, 1, 77, 1024))  # would broadcast silently
    assert out["mask"].sum(dim=1).tolist() == [12.0, 12.0]
    patches = out["sample"].reshape(2, 4, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, -1)
    assert torch.all(patches[out["mask"].bool()] == 0)
    assert torch.all(patches[~out["mask"].bool()].abs().sum(-1) > 0)
