"""Runtime switches that trade memory, speed and compile warm-up, shared by the trainer and `microdit bench`.

None of them renames a parameter, so checkpoints load whatever was switched; beyond the rounding of other kernels
(compiled, or another attention backend), only low-precision norms change the numbers (bf16 rounding of the
normalised activations, as the authors trained).
"""
from dataclasses import dataclass

import torch._functorch.config as functorch_config

from microdit.models.dit import MicroDiT
from microdit.models.layers import SDPA_BACKENDS, ExpertChoiceMoE

COMPILE_MODES = ("none", "model", "blocks")


@dataclass(frozen=True)
class SpeedOptions:
    compile: str = "none"             # none; model (one graph of the whole denoiser); blocks (MicroDiT.compile_blocks)
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
    """Switch `dit` in place; compilation last, so that it sees the other switches."""
    set_activation_budget(options.activation_budget)
    dit.set_low_precision_norms(options.low_precision_norm)
    dit.set_activation_checkpointing(options.checkpoint_blocks)
    dit.set_moe_dispatch(options.moe_dispatch)
    dit.set_attention_backend(options.attention_backend)
    if options.compile == "model":
        dit.compile()  # in place: parameter names stay free of `_orig_mod.`
    elif options.compile == "blocks":
        dit.compile_blocks()


def set_activation_budget(budget: float) -> None:
    """The compiler's activation memory budget: when a graph is compiled for training, its partitioner keeps at most
    `budget` of the activations it would otherwise save for backward and recomputes the rest, cheapest first
    (elementwise work and norms before matmuls): a finer knob than recomputing whole blocks. 1 keeps them all, 0
    recomputes the whole graph. A process-wide compiler setting, read as each graph compiles and part of the compile
    cache's key, so it is set for every model this process compiles from now on (always set: never inherited)."""
    functorch_config.activation_memory_budget = budget
