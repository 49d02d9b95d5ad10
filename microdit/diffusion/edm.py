"""EDM (Karras et al. 2022) as MicroDiT uses it: preconditioning, log-normal noise levels, the weighted loss with its
patch-pooled masked variant, and the deterministic Heun sampler. Names follow the paper: sigma, c_skip, c_out, c_in,
c_noise, D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class EDMConfig:
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.9   # MicroDiT's value, not EDM's 0.5
    rho: float = 7.0
    p_mean: float = -0.6      # 256 px stages; the 512 px stages use 0.0 / 0.6
    p_std: float = 1.2


def preconditioning(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) for noise levels sigma broadcast as (N,1,1,1)."""
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def denoise(dit, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor, sigma_data: float, cfg: float = 1.0,
            mask_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """D(x; sigma) and the token mask (None when unmasked). sigma: (N,) or a scalar shared by the batch."""
    sigma = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    out = dit(c_in * x, c_noise.flatten(), y, cfg=cfg, mask_ratio=mask_ratio)
    return c_skip * x + c_out * out["sample"].to(x.dtype), out["mask"]


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = 1 / c_out²: makes the loss a unit-weighted MSE on the network output F."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def masked_patch_mean(loss: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean of a (N,C,H,W) loss over the kept patches only (mask (N,T), 1 = dropped), averaged per sample first."""
    per_patch = F.avg_pool2d(loss.mean(dim=1), patch_size, patch_size).flatten(1)  # row-major = token order
    kept = 1 - mask
    return ((per_patch * kept).sum(dim=1) / kept.sum(dim=1)).mean()


def denoising_error(dit, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                    sigma_data: float, mask_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """lambda(sigma) (D(x + sigma n; sigma) - x)² per element (N,C,H,W), and the token mask (None when unmasked):
    the loss before its mean, at given noise levels sigma (N,1,1,1) and noise n."""
    denoised, mask = denoise(dit, x + sigma * noise, sigma, y, sigma_data, mask_ratio=mask_ratio)
    return loss_weight(sigma, sigma_data) * (denoised.float() - x) ** 2, mask


def edm_loss(dit, x: torch.Tensor, y: torch.Tensor, edm: EDMConfig, mask_ratio: float = 0.0) -> torch.Tensor:
    """Denoising loss at sigma = exp(P_mean + P_std n), n ~ N(0, 1) per sample."""
    if mask_ratio > 0 and not dit.training:
        raise ValueError("patch masking is a training-only regulariser; call dit.train() or use mask_ratio=0")
    sigma = (edm.p_mean + edm.p_std * torch.randn(x.shape[0], device=x.device)).exp().reshape(-1, 1, 1, 1)
    loss, mask = denoising_error(dit, x, y, sigma, torch.randn_like(x), edm.sigma_data, mask_ratio)
    if mask is None:
        return loss.mean()
    return masked_patch_mean(loss, mask, dit.config.patch_size)


def karras_sigmas(num_steps: int, edm: EDMConfig) -> torch.Tensor:
    """sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, then sigma_N = 0 (float64, N+1 values)."""
    i = torch.arange(num_steps, dtype=torch.float64)
    lo, hi = edm.sigma_min ** (1 / edm.rho), edm.sigma_max ** (1 / edm.rho)
    sigmas = (hi + i / max(num_steps - 1, 1) * (lo - hi)) ** edm.rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def heun_sampler(dit, noise: torch.Tensor, y, edm: EDMConfig, num_steps: int = 30,
                 cfg: float = 1.0, state_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Deterministic 2nd-order EDM sampler (S_churn = 0, so no noise is injected or drawn). The last step, to
    sigma = 0, is Euler. `y`: the captions as `dit` takes them (a MicroDiT's precomputed caption context:
    latent_diffusion.sample_latents). The state is carried in `state_dtype` (float64 is slow on GPUs); the network
    sees float32 inputs, autocast or not."""
    sigmas = karras_sigmas(num_steps, edm).to(noise.device)
    guidance = cfg if cfg > 1.0 else 1.0

    def slope(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        denoised, _ = denoise(dit, x.float(), sigma.float(), y, edm.sigma_data, cfg=guidance)
        return (x - denoised.to(state_dtype)) / sigma

    x = noise.to(state_dtype) * sigmas[0]
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i].to(state_dtype), sigmas[i + 1].to(state_dtype)
        d = slope(x, sigma)
        x_next = x + (sigma_next - sigma) * d
        if i < num_steps - 1:
            x_next = x + (sigma_next - sigma) * (d + slope(x_next, sigma_next)) / 2
        x = x_next
    return x.float()
