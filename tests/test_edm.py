"""EDM preconditioning, loss and Heun sampler against closed forms."""
import math

import pytest
import torch

from microdit.diffusion.edm import (
    EDMConfig, denoise, edm_loss, heun_sampler, karras_sigmas, loss_weight, masked_patch_mean, preconditioning,
)
from microdit.models.dit import create_dit


def test_preconditioning_identities():
    sigma = torch.tensor([0.002, 0.5, 0.9, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, 0.9)
    torch.testing.assert_close(loss_weight(sigma, 0.9) * c_out ** 2, torch.ones_like(sigma))
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma ** 2 + 0.81))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)
    # EDM's unit-variance training target: Var[(x - c_skip (x + n)) / c_out] = 1 for x ~ sigma_data, n ~ sigma
    torch.testing.assert_close(((1 - c_skip) ** 2 * 0.81 + c_skip ** 2 * sigma ** 2) / c_out ** 2,
                               torch.ones_like(sigma))


@pytest.mark.parametrize("sigma", [0.2, 0.9, 3.0])
def test_preconditioning_on_gaussian_data(sigma):
    # data x ~ N(0, sigma_data^2) noised to x + n: the network's input has unit variance, the skip path alone is the
    # best denoiser there (E[x | x + n] = c_skip (x + n), the least-squares slope), and the training target has unit
    # variance
    g = torch.Generator().manual_seed(0)
    x = 0.9 * torch.randn(400_000, generator=g, dtype=torch.float64)
    noisy = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    c_skip, c_out, c_in, _ = preconditioning(torch.tensor(sigma, dtype=torch.float64), 0.9)
    assert (c_in * noisy).std().item() == pytest.approx(1, rel=1e-2)
    least_squares_slope = (x * noisy).sum() / (noisy * noisy).sum()
    assert least_squares_slope.item() == pytest.approx(c_skip.item(), rel=2e-2)
    assert ((x - c_skip * noisy) / c_out).std().item() == pytest.approx(1, rel=1e-2)


def test_karras_sigmas_30_steps():
    sigmas = karras_sigmas(30, EDMConfig())
    assert sigmas.dtype == torch.float64 and sigmas.shape == (31,)
    assert sigmas[0].item() == pytest.approx(80.0)
    assert sigmas[1:5].tolist() == pytest.approx([66.10, 54.33, 44.40, 36.07], abs=5e-3)
    assert sigmas[-5:-1].tolist() == pytest.approx([0.01781, 0.00924, 0.00448, 0.002], abs=5e-5)
    assert sigmas[-1].item() == 0


def test_masked_patch_mean_pools_by_patch_and_averages_kept_per_sample():
    loss = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]], dtype=torch.float32)  # tokens row-major over 2x2 patches
    per_patch = loss.mean(1).reshape(2, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(2, 4, 4).mean(-1)
    expected = (per_patch[0, 0] + per_patch[1, [0, 1, 3]].mean()) / 2
    assert masked_patch_mean(loss, mask, 2).item() == pytest.approx(expected.item())


class AnalyticDenoiser(torch.nn.Module):
    """Network whose D is the ideal denoiser for data ~ N(0, s²): D(x; sigma) = x s² / (s² + sigma²)."""

    def __init__(self, data_std: float, sigma_data: float):
        super().__init__()
        self.s, self.sd = data_std, sigma_data

    def forward(self, x_in, c_noise, y, cfg=1.0, mask_ratio=0.0):
        sigma = torch.exp(4 * c_noise).reshape(-1, 1, 1, 1).to(torch.float64)
        c_skip, c_out, c_in, _ = preconditioning(sigma, self.sd)
        x = x_in.to(torch.float64) / c_in
        ideal = x * self.s ** 2 / (self.s ** 2 + sigma ** 2)
        return {"sample": ((ideal - c_skip * x) / c_out).float(), "mask": None}


def test_heun_sampler_converges_to_the_probability_flow_ode_solution_at_second_order():
    """For Gaussian data the ODE keeps x / sqrt(s² + sigma²) constant: x(0) = z sigma_max s / sqrt(s² + sigma_max²)."""
    edm, s = EDMConfig(), 0.7
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    exact = (z * edm.sigma_max * s / math.sqrt(s ** 2 + edm.sigma_max ** 2)).double()

    def relative_error(steps: int) -> float:
        out = heun_sampler(AnalyticDenoiser(s, edm.sigma_data), z, torch.zeros(4, 1, 77, 8), edm, num_steps=steps)
        assert out.dtype == torch.float32
        return ((out.double() - exact) / exact).abs().max().item()

    coarse, fine = relative_error(100), relative_error(300)
    assert fine < 2e-4
    assert coarse / fine > 7  # 3x the steps -> ~9x smaller error for a 2nd-order method (Euler would give ~3x)
    assert relative_error(30) < 0.02


def test_cfg_on_network_output_equals_guidance_on_denoised():
    torch.manual_seed(0)
    dit = create_dit("MicroDiT_Nano_2", input_size=8, caption_channels=16).eval()
    for p in dit.final_layer.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, y, sigma = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 77, 16), torch.tensor(1.3)
    with torch.no_grad():
        guided, _ = denoise(dit, x, sigma, y, 0.9, cfg=4.0)
        cond, _ = denoise(dit, x, sigma, y, 0.9)
        uncond, _ = denoise(dit, x, sigma, torch.zeros_like(y), 0.9)
    torch.testing.assert_close(guided, uncond + 4.0 * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_edm_loss_is_unit_weighted_mse_on_network_output_at_init():
    """At init F == 0, so the loss is E[lambda (c_skip (x + n) - x)²] — about 1 in expectation (see identities)."""
    torch.manual_seed(0)
    dit = create_dit("MicroDiT_Nano_2", input_size=8, caption_channels=16).train()
    x = 0.9 * torch.randn(256, 4, 8, 8)
    loss = edm_loss(dit, x, torch.randn(256, 1, 77, 16), EDMConfig())
    assert loss.item() == pytest.approx(1.0, abs=0.1)
    masked = edm_loss(dit, x, torch.randn(256, 1, 77, 16), EDMConfig(), mask_ratio=0.75)
    assert masked.item() == pytest.approx(1.0, abs=0.1)
    dit.eval()
    with pytest.raises(ValueError, match="training-only"):
        edm_loss(dit, x[:2], torch.randn(2, 1, 77, 16), EDMConfig(), mask_ratio=0.5)


def test_float32_sampler_state_matches_float64():
    """The default float32 state (no float64 on the GPU hot path) costs nothing next to the 30-step ODE error."""
    edm, s = EDMConfig(), 0.7
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    denoiser, captions = AnalyticDenoiser(s, edm.sigma_data), torch.zeros(4, 1, 77, 8)
    single = heun_sampler(denoiser, z, captions, edm, num_steps=30, state_dtype=torch.float32)
    double = heun_sampler(denoiser, z, captions, edm, num_steps=30, state_dtype=torch.float64)
    exact = z * edm.sigma_max * s / math.sqrt(s ** 2 + edm.sigma_max ** 2)
    assert ((single - double) / exact).abs().max() < 1e-5 < ((double - exact) / exact).abs().max()
