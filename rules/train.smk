# One training stage. The resolved stage config is an artifact of its own, so a config change reaches only the
# stages it touches. The trainer decides what a rerun costs: checkpoints written under the same settings of what it
# computes (cosmetic changes: logging, launch) are resumed, so the stage is only re-exported; a real change (lr,
# data, ...) sets them aside and retrains. Training launches its own job with submitit (SLURM, local processes or
# in-process) and waits, so the rule runs where Snakemake runs (localrule).
rule stage_config:
    input:
        base=lambda w: workflow_path(config["stages"][w.stage]["config"]),
    output:
        f"{RUN}/train/{{stage}}/stage.yaml",
    params:
        overrides=lambda w: set_options(stage_overrides(w.stage)),
    log:
        f"{RUN}/logs/train/{{stage}}.config.log",
    localrule: True
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit stage-config --base {input.base:q} --out {output:q} {params.overrides} > {log:q} 2>&1"


rule train:
    input:
        config=f"{RUN}/train/{{stage}}/stage.yaml",
        latents=lambda w: [f"{latents_dir(d)}/index.json" for d in config["stages"][w.stage]["datasets"]],
        previous=lambda w: [f"{stage_dir(previous_stage(w.stage))}/final.safetensors"] if previous_stage(w.stage) else [],
    output:
        final=f"{RUN}/train/{{stage}}/final.safetensors",
        stats=f"{RUN}/train/{{stage}}/train_stats.json",
    log:
        f"{RUN}/logs/train/{{stage}}.log",
    benchmark:
        f"{RUN}/benchmarks/train/{{stage}}.tsv"
    localrule: True
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit train --config {input.config:q} --resume auto > {log:q} 2>&1"
