# One training stage. It reruns when what decides its weights changes: its stage YAML's or `set`'s settings other
# than the cosmetic ones (logging, checkpoint cadence, sample grids, launch, speed switches, loader workers; the
# digest in params.weights), its latents or the stage it starts from. A cosmetic edit reruns nothing (the YAML is
# `ancient`, so its time and checksum do not count); it applies the next time the stage runs. The overrides reach
# the command through a param that takes `input`, which Snakemake's params trigger leaves out (derived params), so
# they are not a trigger of their own. The trainer resumes checkpoints of the same weights-deciding settings, so a
# forced rerun only re-exports. Training launches its own job with submitit (SLURM, local processes or in-process)
# and waits, so the rule runs where Snakemake runs (localrule); its output goes to the console too, where a local
# job's progress lines show (tee ignores the signals that stop the driver, so that its last words reach the log).
# The held-out loss's latents are an input so that they exist first; re-encoding them (a change of their data, VAE
# or text encoder) reruns the job, which re-exports from the checkpoints without training (the held-out loss
# decides no weights), and what follows from the exports.
# Every export is a declared output: a deleted one reruns the job, which exports it again from the last checkpoint.
# The metrics log grows in checkpoints/ (Snakemake removes outputs before a rerun); metrics.jsonl is its export.
# A stage that keeps an EMA (its YAML or `set`) also exports ema.safetensors: rule train_with_ema. (TRAIN_OUTPUTS:
# rules/common.smk)
rule train:
    input:
        base=lambda w: ancient(stage_yaml(w.stage)),
        latents=lambda w: [f"{latents_dir(d)}/index.json" for d in config["stages"][w.stage]["datasets"]],
        previous=lambda w: [f"{stage_dir(previous_stage(w.stage))}/final.safetensors"] if previous_stage(w.stage) else [],
        held_out=heldout_input,
    output:
        **TRAIN_OUTPUTS,
    wildcard_constraints:
        stage=one_of(s for s in STAGES if not keeps_ema(s)),
    params:
        weights=lambda w: stage_weights(stage_yaml(w.stage), stage_overrides(w.stage)),
        overrides=lambda w, input: set_options(stage_overrides(w.stage)),
    priority: CHAIN_PRIORITY
    log:
        f"{RUN}/logs/train/{{stage}}.log",
    benchmark:
        f"{RUN}/benchmarks/train/{{stage}}.tsv"
    localrule: True
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit train --config {input.base:q} {params.overrides} --resume auto 2>&1 "
        "| {{ trap '' TERM HUP INT; exec tee {log:q}; }}"


use rule train as train_with_ema with:
    localrule: True  # not inherited from the rule it copies
    output:
        **TRAIN_OUTPUTS,
        ema=f"{RUN}/train/{{stage}}/ema.safetensors",
    wildcard_constraints:
        stage=one_of(s for s in STAGES if keeps_ema(s)),
