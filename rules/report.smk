# The run's HTML report: loss and lr curves, sample grids per stage with their prompts, each evaluated stage's
# scores side by side (FID or Fréchet distance beside its context values, CLIP score, GenEval, the drawn-shapes
# scores beside their floor and ceilings) next to the paper's numbers, labelled evaluation samples beside their
# reference images, the cost ledger (GPU-hours and dollars per stage) and the provenance of each number.
rule report:
    input:
        stats=expand(f"{RUN}/train/{{stage}}/train_stats.json", stage=STAGES),
        metrics=expand(f"{RUN}/train/{{stage}}/metrics.jsonl", stage=STAGES),
        configs=expand(f"{RUN}/train/{{stage}}/stage.yaml", stage=STAGES),
        grids=expand(f"{RUN}/samples/{{stage}}.png", stage=STAGES),
        scores=all_evaluation_outputs(),
        samples=expand(f"{EVAL}/{{stage}}/samples/generation.json", stage=EVAL_STAGES),
        grid_reference=f"{grid_reference_dir()}/generation.json",
        captions=f"{EVAL}/captions.jsonl",
    output:
        report(f"{RUN}/report.html", caption="../config/report_caption_report.rst", category="Report"),
    params:
        options=report_options,
        stages=" ".join(shlex.quote(s) for s in STAGES),
        title=f"MicroDiT run '{config['run']}'",
        price=config["report"]["price_per_gpu_hour"],
    log:
        f"{RUN}/logs/report.log",
    benchmark:
        f"{RUN}/benchmarks/report.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit report --out {output:q} --title {params.title:q} --stages {params.stages} {params.options}"
        " --price-per-gpu-hour {params.price} > {log:q} 2>&1"
