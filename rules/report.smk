# The run's HTML report: loss and lr curves, sample grids per stage, FID / GenEval next to the paper's numbers,
# and the cost ledger (GPU-hours and dollars per stage).
rule report:
    input:
        stats=expand(f"{RUN}/train/{{stage}}/train_stats.json", stage=STAGES),
        grids=expand(f"{RUN}/samples/{{stage}}.png", stage=STAGES),
        **evaluation_outputs(),
    output:
        report(f"{RUN}/report.html", caption="../config/report_caption_report.rst", category="Report"),
    params:
        options=report_options,
        stages=" ".join(shlex.quote(s) for s in STAGES),
        title=f"MicroDiT run '{config['run']}'",
        price=config["report"]["price_per_gpu_hour"],
    log:
        f"{RUN}/logs/report.log",
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit report --out {output:q} --title {params.title:q} --stages {params.stages} {params.options}"
        " --price-per-gpu-hour {params.price} > {log:q} 2>&1"
