# The run's HTML report: loss and lr curves, sample grids per stage with their prompts, FID / GenEval next to the
# paper's numbers, the cost ledger (GPU-hours and dollars per stage) and the provenance of each number.
# The curves come from each stage's metrics.jsonl.
rule report:
    input:
        stats=expand(f"{RUN}/train/{{stage}}/train_stats.json", stage=STAGES),
        metrics=expand(f"{RUN}/train/{{stage}}/metrics.jsonl", stage=STAGES),
        configs=expand(f"{RUN}/train/{{stage}}/stage.yaml", stage=STAGES),
        grids=expand(f"{RUN}/samples/{{stage}}.png", stage=STAGES),
        **evaluation_outputs(),
        shapes=shape_score_outputs(),
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
