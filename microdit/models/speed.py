"""Runtime switches that trade memory for speed, applied to a MicroDiT from outside (the model holds the network and
its math only), shared by the trainer, the samplers and `microdit bench`.

None of them renames a parameter, so checkpoints load whatever was switched; beyond the rounding of other kernels
(compiled, or another attention backend), only low-precision norms change the numbers (bf16 rounding of the
normalised activations, as the authors trained).
"""
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from microdit.models.dit import DiTBlock, MicroDiT
from microdit.models.layers import SDPA_BACKENDS, CrossAttention, ExpertChoiceMoE, LayerNorm, SelfAttention

COMPILE_MODES = ("none", "model", "blocks")


@dataclass(frozen=True)
class SpeedOptions:
    compile: str = "none"             # none; model (one graph of the whole denoiser); blocks (compile_blocks)
    low_precision_norm: bool = False  # LayerNorms in the autocast dtype
    checkpoint_blocks: int = 0        # DiT blocks whose activations are recomputed in backward (mixer first)
    moe_dispatch: str = "index"       # index (gather / scatter), or one_hot (the authors' dense einsums)
    attention_backend: str = "default"  # which SDPA kernels attention may use (layers.SDPA_BACKENDS)
    activation_budget: float = 1.0    # compiled graphs keep at most this fraction of their activations (below)

    def __post_init__(self):
        # worded as field errors: a stage config reports them under its file name (train/config.py)
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile: expected one of {list(COMPILE_MODES)}, got {self.compile!r}")
        if self.moe_dispatch not in ExpertChoiceMoE.DISPATCHES:
            raise ValueError(f"moe_dispatch: expected one of {list(ExpertChoiceMoE.DISPATCHES)}, "
                             f"got {self.moe_dispatch!r}")
        if self.attention_backend not in SDPA_BACKENDS:
            raise ValueError(f"attention_backend: expected one of {sorted(SDPA_BACKENDS)}, "
                             f"got {self.attention_backend!r}")
        if self.checkpoint_blocks < 0:
            raise ValueError(f"checkpoint_blocks: must be >= 0, got {self.checkpoint_blocks}")
        if not 0.0 <= self.activation_budget <= 1.0:
            raise ValueError(f"activation_budget: expected a fraction in [0, 1], got {self.activation_budget}")
        if self.activation_budget < 1.0 and self.compile == "none":
            raise ValueError("activation_budget: below 1 needs compile (model or blocks): the compiler chooses what "
                             "to recompute; without it use checkpoint_blocks")


def apply_speed_options(dit: MicroDiT, options: SpeedOptions) -> None:
    """Switch `dit` in place, from outside: the model itself knows nothing of these. Compilation last, so that it
    sees the other switches."""
    for module in dit.modules():
        if isinstance(module, LayerNorm):
            module.low_precision = options.low_precision_norm
        elif isinstance(module, ExpertChoiceMoE):
            module.dispatch = options.moe_dispatch
        elif isinstance(module, (SelfAttention, CrossAttention)):
            module.backend = options.attention_backend
    for block in [*dit.patch_mixer, *dit.blocks][:options.checkpoint_blocks]:
        block.__class__ = RecomputedDiTBlock
    if options.compile != "none":
        set_activation_budget(options.activation_budget)
    if options.compile == "model":
        dit.compile()  # in place: parameter names stay free of `_orig_mod.`
    elif options.compile == "blocks":
        compile_blocks(dit)


class RecomputedDiTBlock(DiTBlock):
    """A DiT block whose activations are recomputed in backward instead of stored (activation checkpointing). Put
    in place by swapping the block's class, as FSDP's fully_shard does: parameter names stay, and the checkpoint
    wraps the block's call, so a compiled block is recomputed whole."""

    def __call__(self, *args):
        if torch.is_grad_enabled():
            return checkpoint(super().__call__, *args, use_reentrant=False)
        return super().__call__(*args)


def compile_blocks(dit: MicroDiT, **options) -> None:
    """Regional compilation: each transformer block compiled in place (names stay free of `_orig_mod.`), the
    glue between them left eager, so that activation checkpointing wraps whole compiled blocks. Layer-wise scaling
    gives most blocks their own widths, hence their own graph (27 for XL), and a process may also sample with them
    (another graph each): dynamo's recompile limit is raised to cover those uses, past which the remaining blocks
    would silently run eagerly. Static by default: dynamo would otherwise re-trace later blocks with symbolic
    sizes, so a block's graph would depend on the blocks compiled before it (and a restart would miss the compile
    cache). Without DDP's graph splitting, which serves whole-model graphs (a block-sized graph already overlaps
    communication) and whose split graphs bypass the compile cache (found on the CPU over gloo)."""
    options.setdefault("dynamic", False)
    torch._dynamo.config.optimize_ddp = False
    blocks = [*dit.patch_mixer, *dit.blocks, dit.y_emb_preprocess]
    uses = 4  # training, sampling during training, and headroom for an evaluation batch shape
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, uses * len(blocks))
    for block in blocks:
        block.compile(**options)


def set_activation_budget(budget: float) -> None:
    """The compiler's activation memory budget: when a graph is compiled for training, its partitioner keeps at most
    `budget` of the activations it would otherwise save for backward and recomputes the rest, cheapest first
    (elementwise work and norms before matmuls): a finer knob than recomputing whole blocks. 1 keeps them all, 0
    recomputes the whole graph. A process-wide compiler setting, read as each graph compiles and part of the compile
    cache's key, so `apply_speed_options` sets it before every compile (never inherited from an earlier one)."""
    import torch._functorch.config as functorch_config  # the compiler's modules cost 1.5 s to import: when used

    functorch_config.activation_memory_budget = budget


def keep_compiling_within(cpus: int) -> None:
    """Size the compiler's kernel-build pool (inductor's compile_threads: one per visible CPU, up to 32) by the
    `cpus` a task was allotted: a task that SLURM did not bind to its CPUs sees the whole node, and each of a node's
    ranks would start up to 32 build processes. Not part of any compiled graph's cache key."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = max(1, min(inductor_config.compile_threads or 1, cpus))
