"""Which stage settings change how a run is watched, placed or sped up rather than the weights it trains.

Editing them keeps a stage's checkpoints (microdit.train.state.run_fingerprint) and does not rerun a finished stage
in the workflow (rules/train.smk). Standard library only: the Snakefile imports it at parse time.
"""
COSMETIC_FIELDS = frozenset({
    "name", "out_dir", "log_every", "progress", "save_every", "keep_checkpoints", "samples", "launch",
    "compile", "precompile_workers", "checkpoint_blocks", "attention_backend", "activation_budget"})


def weight_settings(settings: dict) -> dict:
    """`settings` without the cosmetic ones. Keys are top-level fields or dotted paths into them (`launch.account`),
    as in a stage YAML and in `--set` overrides."""
    return {key: value for key, value in settings.items() if key.split(".")[0] not in COSMETIC_FIELDS}
