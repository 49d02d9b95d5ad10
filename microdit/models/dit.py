"""MicroDiT: a sparse diffusion transformer with a patch mixer, deferred patch masking and expert-choice MoE.

Reads top-down: config -> blocks -> model (forward, CFG, unpatchify) -> init -> named variants.
Matches the authors' parameter names, shapes and math (shared/reference/SPEC.md §1) so released checkpoints load.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from microdit.models.layers import (
    CrossAttention, ExpertChoiceMoE, Mlp, PatchEmbed, SelfAttention, SwiGLU, TimestepEmbedder, layer_norm, modulate,
    random_token_mask, round_up, sincos_pos_embed_2d,
)


@dataclass(frozen=True)
class MicroDiTConfig:
    input_size: int = 32              # latent side (image side / 8)
    patch_size: int = 2
    in_channels: int = 4
    dim: int = 1024
    depth: int = 28
    head_dim: int = 64
    multiple_of: int = 256
    caption_channels: int = 1024
    pos_interp_scale: float = 1.0
    qkv_ratio_range: tuple[float, float] = (0.5, 1.0)   # layer-wise scaling, linspace over depth
    ffn_ratio_range: tuple[float, float] = (0.5, 4.0)
    num_experts: int = 8
    expert_capacity: float = 2.0
    experts_every_n: int = 2
    patch_mixer_depth: int = 6
    patch_mixer_dim: int = 768
    patch_mixer_qkv_ratio: float = 1.0
    patch_mixer_mlp_ratio: float = 4.0
    norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2


class DiTBlock(nn.Module):
    """adaLN-modulated, gated self-attention and FFN; an un-modulated, un-gated cross-attention in between."""

    def __init__(self, dim: int, cond_dim: int, head_dim: int, qkv_ratio: float, mlp_ratio: float,
                 multiple_of: int, use_moe: bool, num_experts: int, capacity: float, eps: float):
        super().__init__()
        attn_hidden = dim if qkv_ratio == 1 else round_up(int(dim * qkv_ratio), 2 * head_dim)
        ffn_hidden = int(dim * mlp_ratio)
        self.norm1 = layer_norm(dim, eps)
        self.attn = SelfAttention(dim, head_dim, attn_hidden, eps)
        self.cross_attn = CrossAttention(dim, head_dim, dim, eps)
        self.norm2 = layer_norm(dim, eps)
        self.norm3 = layer_norm(dim, eps)
        self.mlp = (ExpertChoiceMoE(dim, ffn_hidden, multiple_of, num_experts, capacity) if use_moe
                    else SwiGLU(dim, ffn_hidden, multiple_of))
        self.adaLN_modulation = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(cond_dim, 6 * dim))

    def forward(self, x: torch.Tensor, y, c: torch.Tensor) -> torch.Tensor:
        """x (N, T, D) image tokens; y: caption tokens, or their cross-attention keys and values (CaptionContext);
        c (N, D') the timestep-and-caption condition."""
        modulation = self.adaLN_modulation(c).chunk(6, dim=-1)             # 6 x (N, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, T, D)
        x = x + self.cross_attn(self.norm2(x), y)                           # (N, T, D)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))  # (N, T, D)


class PromptBlock(nn.Module):
    """Pre-norm transformer layer over the caption tokens, no timestep conditioning (`y_emb_preprocess`)."""

    def __init__(self, dim: int, head_dim: int, multiple_of: int, eps: float):
        super().__init__()
        self.norm1 = layer_norm(dim, eps)
        self.attn = SelfAttention(dim, head_dim, dim, eps)
        self.norm2 = layer_norm(dim, eps)
        self.mlp = SwiGLU(dim, 4 * dim, multiple_of)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y + self.attn(self.norm1(y))
        return y + self.mlp(self.norm2(y))


class CaptionProjection(nn.Module):
    def __init__(self, caption_channels: int, dim: int):
        super().__init__()
        self.y_proj = Mlp(caption_channels, dim, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


@dataclass
class CaptionContext:
    """The caption side of the network: the pooled caption embedding (added to the timestep's) and what each
    block's cross-attention reads, the caption tokens or, precomputed for sampling, their keys and values."""
    pooled: torch.Tensor
    mixer: list
    backbone: list


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(dim, 2 * dim))
        self.norm_final = layer_norm(dim, eps)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def _projection(in_dim: int, out_dim: int, eps: float) -> nn.Module:
    return nn.Sequential(layer_norm(in_dim, eps), nn.Linear(in_dim, out_dim, bias=False))


class MicroDiT(nn.Module):
    """Denoiser F(x, c_noise, y) of EDM: latents (N,C,H,W), noise level (N,) or (1,), captions (N,1,L,D) or (N,L,D)."""

    def __init__(self, config: MicroDiTConfig):
        super().__init__()
        self.config = cfg = config
        patch_out = cfg.patch_size ** 2 * cfg.in_channels
        self.register_buffer("pos_embed", torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.register_buffer("mask_token", torch.zeros(1, 1, patch_out))  # restores dropped tokens; never trained

        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.dim)
        self.t_embedder = TimestepEmbedder(cfg.dim)
        self.y_embedder = CaptionProjection(cfg.caption_channels, cfg.dim)
        self.y_emb_preprocess = PromptBlock(cfg.dim, cfg.head_dim, cfg.multiple_of, cfg.norm_eps)
        self.pooled_y_emb_process = Mlp(cfg.dim, cfg.dim, cfg.dim)

        moe = dict(num_experts=cfg.num_experts, capacity=cfg.expert_capacity, eps=cfg.norm_eps)
        self.patch_mixer = nn.ModuleList([
            DiTBlock(cfg.patch_mixer_dim, cfg.dim, cfg.head_dim, cfg.patch_mixer_qkv_ratio, cfg.patch_mixer_mlp_ratio,
                     cfg.multiple_of, use_moe=(i + 1) % cfg.experts_every_n == 0, **moe)
            for i in range(cfg.patch_mixer_depth)])
        if cfg.patch_mixer_dim != cfg.dim:
            self.patch_mixer_map_xin = _projection(cfg.dim, cfg.patch_mixer_dim, cfg.norm_eps)
            self.patch_mixer_map_xout = _projection(cfg.patch_mixer_dim, cfg.dim, cfg.norm_eps)
            self.patch_mixer_map_y = _projection(cfg.dim, cfg.patch_mixer_dim, cfg.norm_eps)
        else:
            self.patch_mixer_map_xin = self.patch_mixer_map_xout = self.patch_mixer_map_y = nn.Identity()

        qkv_ratios = np.linspace(*cfg.qkv_ratio_range, cfg.depth)
        ffn_ratios = np.linspace(*cfg.ffn_ratio_range, cfg.depth)
        self.blocks = nn.ModuleList([
            DiTBlock(cfg.dim, cfg.dim, cfg.head_dim, float(qkv_ratios[i]), float(ffn_ratios[i]), cfg.multiple_of,
                     use_moe=(i + 1) % cfg.experts_every_n == 0 and i < cfg.depth - 1, **moe)
            for i in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg.dim, patch_out, cfg.norm_eps)
        self.initialize_weights()

    # ----------------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: "torch.Tensor | CaptionContext", cfg: float = 1.0,
                mask_ratio: float = 0.0) -> dict:
        """{'sample': F (N,C,H,W), 'mask': (N,T) with 1 = dropped, or None}. cfg != 1 runs classifier-free guidance.
        `y`: caption embeddings, or their `caption_context` computed once for many calls."""
        if cfg != 1.0:
            return self.forward_with_cfg(x, t, y, cfg)
        return self.forward_without_cfg(x, t, y, mask_ratio)

    def forward_without_cfg(self, x: torch.Tensor, t: torch.Tensor, y: "torch.Tensor | CaptionContext",
                            mask_ratio: float = 0.0) -> dict:
        # N images, T = (H/p)(W/p) tokens, K = T(1 - mask_ratio) kept, D = dim, Dm = patch_mixer_dim, P = p*p*C
        batch, side = x.shape[0], self.config.input_size
        if tuple(x.shape[-2:]) != (side, side):  # other sizes can broadcast against pos_embed without an error
            raise ValueError(f"latents of {tuple(x.shape[-2:])}: this model takes {side} x {side} (its input_size)")
        caption = y if isinstance(y, CaptionContext) else self.encode_caption(y)  # (N, D) pooled, (N, L, .) tokens
        if caption.pooled.shape[0] != batch:  # a context of batch 1 would broadcast silently
            raise ValueError(f"a caption context of batch {caption.pooled.shape[0]} for {batch} latents (with guidance "
                             "the batch doubles: caption_context(y, guided=True) with cfg, guided=False without)")
        x = self.x_embedder(x) + self.pos_embed                             # (N, C, H, W) -> (N, T, D)
        c = self.t_embedder(t.reshape(-1).expand(batch)) + caption.pooled   # (N, D)

        x = self.patch_mixer_map_xin(x)                                     # (N, T, Dm)
        for block, context in zip(self.patch_mixer, caption.mixer):
            x = block(x, context, c)                                        # (N, T, Dm)

        mask = None
        if mask_ratio > 0:  # deferred masking: the mixer saw every token, the backbone sees only the kept ones
            mask, ids_keep, ids_restore = random_token_mask(batch, x.shape[1], mask_ratio, x.device)  # (N, T), (N, K)
            x = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (N, K, Dm)
        x = self.patch_mixer_map_xout(x)                                    # (N, K, D)
        for block, context in zip(self.blocks, caption.backbone):
            x = block(x, context, c)                                        # (N, K, D)
        x = self.final_layer(x, c)                                          # (N, K, P)

        if mask is not None:  # dropped tokens come back as the mask token, in their places
            dropped = self.mask_token.to(x.dtype).expand(batch, ids_restore.shape[1] - x.shape[1], -1)
            x = torch.cat([x, dropped], dim=1)                              # (N, T, P), kept first
            x = x.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (N, T, P), token order
        return {"sample": self.unpatchify(x), "mask": mask}                # (N, C, H, W)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: "torch.Tensor | CaptionContext",
                         cfg: float) -> dict:
        """Guidance on the raw network output with the all-zero caption embedding as the null condition. A
        CaptionContext `y` must come from `caption_context(y, guided=True)` (null half included)."""
        t = t.reshape(-1)
        t = t if t.numel() == 1 else torch.cat([t, t])                      # (1,) or (2N,)
        y = y if isinstance(y, CaptionContext) else _with_null_caption(y)   # (2N, ...): conditional, then null
        out = self.forward_without_cfg(torch.cat([x, x]), t, y)["sample"]   # (2N, C, H, W)
        cond, uncond = out.chunk(2)                                         # (N, C, H, W) each
        return {"sample": uncond + cfg * (cond - uncond), "mask": None}

    def encode_caption(self, y: torch.Tensor) -> CaptionContext:
        """Caption embeddings (N,1,L,D) or (N,L,D) -> projected, refined and pooled; every block reads the tokens."""
        # L caption tokens of width E (caption_channels)
        y = y.flatten(1, -2) if y.dim() == 4 else y                         # (N, L, E)
        tokens = self.y_emb_preprocess(self.y_embedder(y))                  # (N, L, D)
        pooled = self.pooled_y_emb_process(tokens.mean(dim=1))              # (N, D)
        mixer_tokens = self.patch_mixer_map_y(tokens)                       # (N, L, Dm)
        return CaptionContext(pooled, [mixer_tokens] * len(self.patch_mixer), [tokens] * len(self.blocks))

    @torch.no_grad()
    def caption_context(self, y: torch.Tensor, guided: bool) -> CaptionContext:
        """For a sampler: the caption side computed once per batch rather than at each network call (59 of them at
        30 Heun steps), every block's cross-attention keys and values included; with `guided`, for the batch
        doubled with the null caption as `forward_with_cfg` runs it. Training never uses it: the keys and values
        would then be kept for backward outside the blocks (and outside activation checkpointing)."""
        caption = self.encode_caption(_with_null_caption(y) if guided else y)
        return CaptionContext(
            caption.pooled,
            [block.cross_attn.context_kv(tokens) for block, tokens in zip(self.patch_mixer, caption.mixer)],
            [block.cross_attn.context_kv(tokens) for block, tokens in zip(self.blocks, caption.backbone)])

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) with (p_row, p_col, channel) per token -> (N, C, H, W)."""
        p, c, g = self.config.patch_size, self.config.in_channels, self.config.grid_size
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    # -------------------------------------------------------------------------------------------------------- init
    def reset_pos_embed(self) -> None:
        cfg = self.config
        embed = sincos_pos_embed_2d(cfg.dim, cfg.grid_size, cfg.pos_interp_scale)
        self.pos_embed.copy_(embed.unsqueeze(0).to(self.pos_embed.device))

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Xavier everywhere, small normals on embeddings, depth-scaled outputs, and zero adaLN / output layers so
        that at init every gated branch is off and F == 0 (D = c_skip * x)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.pos_embed.device.type != "meta":
            self.reset_pos_embed()
        nn.init.xavier_uniform_(self.x_embedder.proj.weight.view(self.config.dim, -1))
        nn.init.zeros_(self.x_embedder.proj.bias)  # the original leaves PyTorch's default here (SPEC §7.8)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.y_embedder.y_proj.fc1,
                       self.y_embedder.y_proj.fc2, self.pooled_y_emb_process.fc1, self.pooled_y_emb_process.fc2):
            nn.init.normal_(linear.weight, std=0.02)

        depth = self.config.depth
        for i, block in enumerate(self.blocks):
            _init_block(block, out_std=0.02 / (2 * (i + 1)) ** 0.5)
        for block in self.patch_mixer:
            _init_block(block, out_std=0.02 / (2 * depth) ** 0.5)

        prompt = self.y_emb_preprocess
        for weight in (prompt.attn.qkv.weight, prompt.mlp.w1.weight, prompt.mlp.w2.weight):
            nn.init.trunc_normal_(weight, std=0.02)
        nn.init.zeros_(prompt.attn.proj.weight)  # the prompt block starts as the identity
        nn.init.zeros_(prompt.mlp.w3.weight)

        nn.init.zeros_(self.final_layer.adaLN_modulation[1].weight)
        nn.init.zeros_(self.final_layer.linear.weight)


def _with_null_caption(y: torch.Tensor) -> torch.Tensor:
    return torch.cat([y, torch.zeros_like(y)])


def _init_block(block: DiTBlock, out_std: float) -> None:
    for norm in (block.norm1, block.norm2, block.norm3):
        nn.init.ones_(norm.weight)
    inputs = [block.attn.qkv.weight, block.cross_attn.q_linear.weight, block.cross_attn.kv_linear.weight]
    outputs = [block.attn.proj.weight, block.cross_attn.proj.weight]
    if isinstance(block.mlp, ExpertChoiceMoE):
        inputs += [block.mlp.gate.weight, block.mlp.w1]
        outputs += [block.mlp.w2]
    else:
        inputs += [block.mlp.w1.weight]
        outputs += [block.mlp.w2.weight, block.mlp.w3.weight]
    for weight in inputs:
        nn.init.trunc_normal_(weight, std=0.02)
    for weight in outputs:
        nn.init.trunc_normal_(weight, std=out_std)
    nn.init.zeros_(block.adaLN_modulation[1].weight)
    nn.init.zeros_(block.adaLN_modulation[1].bias)


# ------------------------------------------------------------------------------------------------------ variants
VARIANTS = {
    "MicroDiT_XL_2": dict(dim=1024, depth=28, head_dim=64, patch_mixer_depth=6, patch_mixer_dim=768),
    "MicroDiT_Tiny_2": dict(dim=512, depth=16, head_dim=32, patch_mixer_depth=4, patch_mixer_dim=512),
    # CPU-sized, every feature kept (mixer projection maps, MoE, layer-wise scaling): for the demo and tests.
    "MicroDiT_Nano_2": dict(dim=128, depth=6, head_dim=32, patch_mixer_depth=2, patch_mixer_dim=96,
                            multiple_of=32, num_experts=4),
}


def variant_config(arch: str, **overrides) -> MicroDiTConfig:
    if arch not in VARIANTS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(VARIANTS)}")
    return MicroDiTConfig(**{**VARIANTS[arch], **overrides})


def create_dit(arch: str, **overrides) -> MicroDiT:
    """Build a named variant, e.g. create_dit('MicroDiT_XL_2', input_size=64, pos_interp_scale=2.0)."""
    return MicroDiT(variant_config(arch, **overrides))
