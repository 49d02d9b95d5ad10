# Part i of a source's `parts` -> its contiguous range of img2dataset-layout shards (NNNNN.tar + NNNNN_stats.json),
# in the store. Resumable: finished shards are kept, so a retry continues the part. Synthetic shapes are drawn in
# seconds on one core; the web sources run for hours (img2dataset: its `processes`), shared among the parts.
rule download:
    output:
        summary=f"{STORE.root}/downloads/{{download}}/parts{{parts}}/{{part}}/download.json",
    params:
        out=lambda w: os.path.dirname(download_part_summary(STORE.download_named(w.download), w.parts, w.part)),
        source=lambda w: config["downloads"][STORE.download_named(w.download)]["source"],
        subset=lambda w: config["downloads"][STORE.download_named(w.download)].get("subset", "full"),
        options=lambda w: cli_options(config["downloads"][STORE.download_named(w.download)].get("options", {})),
    log:
        f"{STORE.root}/logs/download/{{download}}/parts{{parts}}/{{part}}.log",
    benchmark:
        f"{STORE.root}/benchmarks/download/{{download}}/parts{{parts}}/{{part}}.tsv"
    threads: lambda w: download_threads(config["downloads"][STORE.download_named(w.download)])
    retries: DATA_RETRIES
    resources:
        mem_mb=lambda w: 2000 if synthetic_download(STORE.download_named(w.download)) else 16000,
        runtime=lambda w: part_minutes(60 if synthetic_download(STORE.download_named(w.download)) else 2880,
                                       int(w.parts)),
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit download {params.source:q} --out {params.out:q} --subset {params.subset:q} --part {wildcards.part}"
        " --parts {wildcards.parts} {params.options} --summary {output.summary:q} > {log:q} 2>&1"
