"""Building blocks of MicroDiT: attention with full-width QK-norm, SwiGLU, expert-choice MoE, embeddings.

Parameter names and shapes follow the authors' released checkpoints (see shared/reference/SPEC.md §1.3), so a
state_dict saved by the original code loads strictly into these modules.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

NORM_EPS = 1e-6
# Which kernels scaled_dot_product_attention may use; "default" lets PyTorch pick per call (cuDNN's on H100/H200).
SDPA_BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that can run in the autocast dtype, as the authors trained (Composer's low-precision LayerNorm).

    CUDA autocast otherwise runs layer_norm in fp32, so a bf16 input comes out fp32 and the elementwise op after it
    (adaLN modulation) keeps that fp32 copy for backward. Switched from outside (models/speed.py).
    """

    low_precision = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x.shape[-1:] rather than self.normalized_shape: a shape, not a constant, to the compiler (models/speed.py)
        device, weight, bias = x.device.type, self.weight, self.bias
        if not (self.low_precision and torch.is_autocast_enabled(device)):
            return F.layer_norm(x, x.shape[-1:], weight, bias, self.eps)
        dtype = torch.get_autocast_dtype(device)
        weight = None if weight is None else weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return F.layer_norm(x.to(dtype), x.shape[-1:], weight, bias, self.eps)


def layer_norm(dim: int, eps: float = NORM_EPS) -> LayerNorm:
    """The LayerNorm used everywhere in MicroDiT: a weight, no bias."""
    return LayerNorm(dim, eps=eps, bias=False)


def qk_norm(dim: int, eps: float = NORM_EPS) -> LayerNorm:
    """Affine-free LayerNorm over the whole q (or k) vector, all heads jointly."""
    return LayerNorm(dim, eps=eps, elementwise_affine=False)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def round_up(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    # heads follow from the width: with layer-wise scaling the head count varies per block, the head size does not,
    # so blocks of different widths can share one compiled graph (per-block compile, models/speed.py)
    batch, tokens, width = x.shape
    return x.view(batch, tokens, width // head_dim, head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "default") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over heads, computed by one of SDPA_BACKENDS (the same math; only which kernel
    runs, hence the rounding, differs). Switched from outside (models/speed.py)."""
    if SDPA_BACKENDS[backend] is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(SDPA_BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v)


class SelfAttention(nn.Module):
    """Multi-head self-attention; q and k are normalised over the full hidden width before splitting heads."""

    backend = "default"  # see attention()

    def __init__(self, dim: int, head_dim: int, hidden_dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * hidden_dim, bias=False)
        self.q_norm = qk_norm(hidden_dim, eps)
        self.k_norm = qk_norm(hidden_dim, eps)
        self.proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (_split_heads(t, self.head_dim) for t in (q, k, v))
        return self.proj(_merge_heads(attention(q, k, v, self.backend)))


class CrossAttention(nn.Module):
    """Image tokens attend to all caption tokens (padding included, no mask), with the same QK-norm."""

    backend = "default"  # see attention()

    def __init__(self, dim: int, head_dim: int, hidden_dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.head_dim = head_dim
        self.q_linear = nn.Linear(dim, hidden_dim, bias=False)
        self.kv_linear = nn.Linear(dim, 2 * hidden_dim, bias=False)
        self.q_norm = qk_norm(hidden_dim, eps)
        self.k_norm = qk_norm(hidden_dim, eps)
        self.proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """`context`: the caption tokens, or their keys and values from `context_kv` (a sampler computes those once:
        they depend on neither the image nor the noise level)."""
        k, v = context if isinstance(context, tuple) else self.context_kv(context)
        q = _split_heads(self.q_norm(self.q_linear(x)), self.head_dim)
        return self.proj(_merge_heads(attention(q, k, v, self.backend)))

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values of the caption tokens, split into heads."""
        k, v = self.kv_linear(context).chunk(2, dim=-1)
        return _split_heads(self.k_norm(k), self.head_dim), _split_heads(v, self.head_dim)


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x); the hidden width takes 2/3 of `hidden_dim`, rounded up to `multiple_of`."""

    def __init__(self, dim: int, hidden_dim: int, multiple_of: int):
        super().__init__()
        hidden = round_up(int(2 * hidden_dim / 3), multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class ExpertChoiceMoE(nn.Module):
    """Expert-choice mixture of GELU experts (Zhou et al. 2022): each expert picks its top-k tokens of each image.

    k = int(capacity * tokens / num_experts). Dispatch is index based (gather, batched matmul over experts,
    scatter-add). `dispatch = "one_hot"` selects the authors' dense form instead (a one-hot [batch, experts, k,
    tokens] tensor and einsums; same values): kept as the reference for tests and `microdit bench --dispatch`,
    switched from outside (models/speed.py).
    """

    DISPATCHES = ("index", "one_hot")

    def __init__(self, dim: int, hidden_dim: int, multiple_of: int, num_experts: int, capacity: float):
        super().__init__()
        hidden = round_up(hidden_dim, multiple_of)  # no 2/3 rule here, unlike SwiGLU
        self.num_experts, self.capacity = num_experts, capacity
        self.dispatch = "index"
        self.w1 = nn.Parameter(torch.ones(num_experts, dim, hidden))
        self.w2 = nn.Parameter(torch.ones(num_experts, hidden, dim))
        self.gate = nn.Linear(dim, num_experts, bias=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gating weights and token indices, both (N, E, k): each of E experts picks its k tokens of each image."""
        tokens_per_expert = int(self.capacity * x.shape[1] / self.num_experts)
        probs = self.gate(x).softmax(dim=-1)                                # (N, T, E)
        return probs.transpose(1, 2).topk(tokens_per_expert, dim=-1)        # (N, E, k) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates, index = self.route(x)                                        # x (N, T, D) -> (N, E, k) each
        if self.dispatch == "one_hot":
            return self._one_hot_forward(x, gates, index)                   # (N, T, D)
        return self._index_forward(x, gates, index)                         # (N, T, D)

    def _index_forward(self, x: torch.Tensor, gates: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # x (N, T, D); gates, index (N, E, k); w1 (E, D, H), w2 (E, H, D)
        batch, tokens, dim = x.shape
        experts, k = self.num_experts, index.shape[-1]
        flat_index = index.reshape(batch, experts * k, 1).expand(-1, -1, dim)  # (N, E*k, D)
        chosen = x.gather(1, flat_index).view(batch, experts, k, dim)         # (N, E, k, D)
        chosen = chosen.transpose(0, 1).reshape(experts, batch * k, dim)      # (E, N*k, D): one matmul per expert
        out = torch.bmm(F.gelu(torch.bmm(chosen, self.w1)), self.w2)          # (E, N*k, H) -> (E, N*k, D)
        out = out.view(experts, batch, k, dim).transpose(0, 1) * gates.unsqueeze(-1).to(out.dtype)  # (N, E, k, D)
        combined = out.new_zeros(batch, tokens, dim)                          # (N, T, D)
        # a token chosen by several experts sums their gated outputs; one chosen by none gets 0
        return combined.scatter_add(1, flat_index, out.reshape(batch, experts * k, dim))  # (N, T, D)

    def _one_hot_forward(self, x: torch.Tensor, gates: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # x (N, T, D); gates, index (N, E, k); w1 (E, D, H), w2 (E, H, D)
        dispatch = F.one_hot(index, x.shape[1]).to(x.dtype)                 # (N, E, k, T)
        chosen = torch.einsum("nekt,ntd->nekd", dispatch, x)                # (N, E, k, D)
        hidden = F.gelu(torch.einsum("nekd,edh->nekh", chosen, self.w1))    # (N, E, k, H)
        out = torch.einsum("nekh,ehd->nekd", hidden, self.w2)               # (N, E, k, D)
        return torch.einsum("nekt,nek,nekd->ntd", dispatch, gates.to(out.dtype), out)  # (N, T, D)


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> LayerNorm -> fc2, with biases (caption projection and pooled-caption MLP)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.norm = layer_norm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens, row-major: (N, C, H, W) -> (N, H/p * W/p, dim)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a real-valued noise level, cosines first: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
    return features


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, frequency_dim: int = 512):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(dim: int, grid_size: int, interp_scale: float = 1.0) -> torch.Tensor:
    """(grid², dim) fixed 2-D embedding: first half encodes the column, second half the row; token = row*G + col.

    Coordinates are arange(G) / interp_scale, so a 32x32 grid at scale 2 spans the same range as 16x16 at scale 1.
    """
    coords = np.arange(grid_size, dtype=np.float64) / interp_scale
    cols, rows = np.meshgrid(coords, coords)  # xy indexing: cols varies along the last axis
    emb = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
    return torch.from_numpy(emb).float()


def random_token_mask(batch: int, tokens: int, ratio: float, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform random masking per sample: (mask with 1 = dropped, ids_keep, ids_restore)."""
    keep = int(tokens * (1 - ratio))
    ids_shuffle = torch.argsort(torch.rand(batch, tokens, device=device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, tokens, device=device)
    mask[:, :keep] = 0
    return torch.gather(mask, 1, ids_restore), ids_shuffle[:, :keep], ids_restore
