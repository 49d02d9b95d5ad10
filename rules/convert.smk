# Download shards -> a filtered, resized MDS image dataset with per-dataset kept/skipped counts.
rule convert:
    input:
        lambda w: f"{RUN}/data/downloads/{config['datasets'][w.dataset]['download']}/download.json",
    output:
        mds=directory(f"{RUN}/data/{{dataset}}/mds"),
        stats=f"{RUN}/data/{{dataset}}/convert.json",
    params:
        shards=lambda w, input: os.path.dirname(input[0]),
        min_side=lambda w: config["datasets"][w.dataset]["convert"]["min_side"],
        resize_to=lambda w: config["datasets"][w.dataset]["convert"]["resize_to"],
        clean=lambda w: "--clean-captions" if config["datasets"][w.dataset]["convert"].get("clean_captions") else "",
        max_pixels=lambda w: (f"--max-pixels {config['datasets'][w.dataset]['convert']['max_pixels']}"
                              if "max_pixels" in config["datasets"][w.dataset]["convert"] else ""),
    log:
        f"{RUN}/logs/convert/{{dataset}}.log",
    benchmark:
        f"{RUN}/benchmarks/convert/{{dataset}}.tsv"
    threads: lambda w: 2 if synthetic_dataset(w.dataset) else 16
    resources:
        mem_mb=lambda w: 2000 if synthetic_dataset(w.dataset) else 16000,
        runtime=lambda w: 30 if synthetic_dataset(w.dataset) else 1440,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit convert --input {params.shards:q} --out {output.mds:q} --min-side {params.min_side}"
        " --resize-to {params.resize_to} --workers {threads} {params.clean} {params.max_pixels}"
        " > {output.stats:q} 2> {log:q}"
