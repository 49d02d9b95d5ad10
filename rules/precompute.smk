# A part's MDS images -> its MDS latents (VAE posterior sample x scale, text-encoder token states), in the store.
# Restartable: finished units are kept, so the declared output is the index written last, not the directory
# (Snakemake would delete it), and a retry continues the part. One process per GPU (latents.gpus), each writing its
# own units; none means one process on the CPU. The latents are the same for any process or part count (units are
# seeded by their input shard's name): derived from the job's resources, the process count is no rerun trigger.
rule precompute:
    input:
        mds=lambda w: f"{STORE.root}/mds/{STORE.mds_key(STORE.dataset_with_latents(w.latents))}/{part_path(w)}",
        vae=vae_input(),
    output:
        index=f"{STORE.root}/latents/{{latents}}/parts{{parts}}/{{part}}/index.json",
    params:
        out=lambda w: f"{STORE.root}/latents/{w.latents}/{part_path(w)}",
        vae=vae_argument,
        vae_subfolder=cli_options({"vae-subfolder": config["vae"]["subfolder"]}) if config["vae"].get("subfolder") else "",
        text_encoder=TEXT_ENCODER,
        max_length=config["text_encoder"]["context_length"],
        resolutions=" ".join(str(int(r)) for r in config["latents"]["resolutions"]),
        batch_size=config["latents"]["batch_size"],
        seed=config["latents"]["seed"],
        processes=lambda w, resources: max(1, resources.gpu),
    priority: CHAIN_PRIORITY
    log:
        f"{STORE.root}/logs/precompute/{{latents}}/parts{{parts}}/{{part}}.log",
    benchmark:
        f"{STORE.root}/benchmarks/precompute/{{latents}}/parts{{parts}}/{{part}}.tsv"
    threads: 8 * LATENT_GPUS if LATENT_GPUS else 1  # without GPUs, the training and held-out sets side by side
    retries: DATA_RETRIES
    resources:
        gpu=LATENT_GPUS,
        mem_mb=24000 * LATENT_GPUS if LATENT_GPUS else 4000,
        runtime=lambda w: part_minutes(2880 if LATENT_GPUS else 120, int(w.parts)),
        **placement(LATENT_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit precompute --input {input.mds:q} --out {params.out:q} --vae {params.vae:q} {params.vae_subfolder}"
        " --text-encoder {params.text_encoder:q} --max-length {params.max_length} --resolutions {params.resolutions} --batch-size {params.batch_size}"
        " --seed {params.seed} --processes {params.processes} > {log:q} 2>&1"
