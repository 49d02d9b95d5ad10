# A download part's shards -> a filtered, resized MDS image dataset of that part with its kept/skipped counts, in the
# store (merge_parts then reads the parts as one dataset). A part is converted whole or not at all.
rule convert:
    input:
        lambda w: download_part_summary(config["datasets"][STORE.dataset_with_mds(w.mds)]["download"], w.parts,
                                        w.part),
    output:
        mds=directory(f"{STORE.root}/mds/{{mds}}/parts{{parts}}/{{part}}"),
        stats=f"{STORE.root}/mds/{{mds}}/parts{{parts}}/{{part}}.json",
    params:
        shards=lambda w, input: os.path.dirname(input[0]),
        min_side=lambda w: convert_rules(w)["min_side"],
        resize_to=lambda w: convert_rules(w)["resize_to"],
        clean=lambda w: "--clean-captions" if convert_rules(w).get("clean_captions") else "",
        max_pixels=lambda w: (f"--max-pixels {convert_rules(w)['max_pixels']}"
                              if "max_pixels" in convert_rules(w) else ""),
    priority: CHAIN_PRIORITY
    log:
        f"{STORE.root}/logs/convert/{{mds}}/parts{{parts}}/{{part}}.log",
    benchmark:
        f"{STORE.root}/benchmarks/convert/{{mds}}/parts{{parts}}/{{part}}.tsv"
    threads: lambda w: 1 if synthetic_dataset(STORE.dataset_with_mds(w.mds)) else 16  # a second job fills core 2
    retries: DATA_RETRIES
    resources:
        mem_mb=lambda w: 2000 if synthetic_dataset(STORE.dataset_with_mds(w.mds)) else 16000,
        runtime=lambda w: part_minutes(30 if synthetic_dataset(STORE.dataset_with_mds(w.mds)) else 1440,
                                       int(w.parts)),
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit convert --input {params.shards:q} --out {output.mds:q} --min-side {params.min_side}"
        " --resize-to {params.resize_to} --workers {threads} {params.clean} {params.max_pixels}"
        " > {output.stats:q} 2> {log:q}"


# A dataset's parts as one MDS dataset: <parts folder>/index.json lists each part's shards, parts in order (what the
# VAE training, for MDS images, and the training stages, for latents, read). Seconds, where Snakemake runs.
rule merge_parts:
    input:
        # convert's outputs are its part folders; precompute's, the index each part writes last
        lambda w: [folder if w.kind == "mds" else f"{folder}/index.json" for folder in part_folders(w)],
    output:
        f"{STORE.root}/{{kind}}/{{key}}/parts{{parts}}/index.json",
    params:
        out=lambda w: f"{STORE.root}/{w.kind}/{w.key}/parts{w.parts}",
        parts=lambda w: " ".join(map(shlex.quote, part_folders(w))),
    priority: CHAIN_PRIORITY
    log:
        f"{STORE.root}/logs/merge_parts/{{kind}}/{{key}}/parts{{parts}}.log",
    wildcard_constraints:
        key=one_of(STORE.keys("mds") + STORE.keys("latents")),
    localrule: True
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit merge-parts --out {params.out:q} {params.parts} > {log:q} 2>&1"
