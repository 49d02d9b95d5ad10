"""Which stage settings change how a run is watched, placed or sped up rather than the weights it trains.

Editing them keeps a stage's checkpoints (microdit.train.state.run_fingerprint) and does not rerun a finished stage
in the workflow (rules/train.smk). Standard library only: the Snakefile imports it at parse time.
"""
COSMETIC_FIELDS = frozenset({
    "name", "out_dir", "log_every", "progress", "save_every", "keep_checkpoints", "samples", "validation", "launch",
    "compile", "checkpoint_blocks", "attention_backend", "activation_budget", "moe_dispatch"})

# data options that change how fast batches arrive, not which samples they hold
LOADER_SPEED_OPTIONS = frozenset({"num_workers", "pin_memory", "clean_shared_memory", "prefetch_factor",
                                  "persistent_workers"})

COSMETIC_PATHS = COSMETIC_FIELDS | {f"data.options.{option}" for option in LOADER_SPEED_OPTIONS}


def weight_settings(settings: dict, prefix: str = "") -> dict:
    """`settings` without the cosmetic ones, at any depth. Keys are fields or dotted paths into them
    (`launch.account`, `data.options.num_workers`), as in a stage YAML and in `--set` overrides."""
    kept = {}
    for key, value in settings.items():
        path = prefix + key
        if any(path == cosmetic or path.startswith(cosmetic + ".") for cosmetic in COSMETIC_PATHS):
            continue
        kept[key] = weight_settings(value, path + ".") if isinstance(value, dict) else value
    return kept
