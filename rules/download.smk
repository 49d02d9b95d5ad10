# A source -> img2dataset-layout shards (NNNNN.tar + NNNNN_stats.json). Resumable: finished shards are kept.
# Synthetic shapes are drawn in seconds on one core; the web sources run for hours (img2dataset: its `processes`).
rule download:
    output:
        summary=f"{RUN}/data/downloads/{{download}}/download.json",
    params:
        out=lambda w: f"{RUN}/data/downloads/{w.download}",
        source=lambda w: config["downloads"][w.download]["source"],
        subset=lambda w: config["downloads"][w.download].get("subset", "full"),
        options=lambda w: cli_options(config["downloads"][w.download].get("options", {})),
    log:
        f"{RUN}/logs/download/{{download}}.log",
    benchmark:
        f"{RUN}/benchmarks/download/{{download}}.tsv"
    threads: lambda w: download_threads(config["downloads"][w.download])
    resources:
        mem_mb=lambda w: 2000 if synthetic_download(w.download) else 16000,
        runtime=lambda w: 60 if synthetic_download(w.download) else 2880,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit download {params.source:q} --out {params.out:q} --subset {params.subset:q} {params.options}"
        " --summary {output.summary:q} > {log:q} 2>&1"
