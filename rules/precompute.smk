# MDS images -> MDS latents (VAE posterior sample x scale, text-encoder token states). Restartable: finished parts
# are kept, so the declared output is the index written last, not the directory (Snakemake would delete it).
# One process per GPU (latents.gpus), each writing its own parts; none means one process on the CPU. The latents
# are the same for any process count: derived from the job's resources, the count is no rerun trigger.
rule precompute:
    input:
        mds=f"{RUN}/data/{{dataset}}/mds",
        vae=vae_input(),
    output:
        index=f"{RUN}/data/{{dataset}}/latents/index.json",
    params:
        out=lambda w: latents_dir(w.dataset),
        vae=vae_argument,
        vae_subfolder=cli_options({"vae-subfolder": config["vae"]["subfolder"]}) if config["vae"].get("subfolder") else "",
        text_encoder=config["text_encoder"]["name"],
        resolutions=" ".join(str(int(r)) for r in config["latents"]["resolutions"]),
        batch_size=config["latents"]["batch_size"],
        seed=config["latents"]["seed"],
        processes=lambda w, resources: max(1, resources.gpu),
    log:
        f"{RUN}/logs/precompute/{{dataset}}.log",
    benchmark:
        f"{RUN}/benchmarks/precompute/{{dataset}}.tsv"
    threads: 8 * LATENT_GPUS if LATENT_GPUS else 2
    resources:
        gpu=LATENT_GPUS,
        mem_mb=24000 * LATENT_GPUS if LATENT_GPUS else 4000,
        runtime=2880 if LATENT_GPUS else 120,
        **placement(LATENT_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit precompute --input {input.mds:q} --out {params.out:q} --vae {params.vae:q} {params.vae_subfolder}"
        " --text-encoder {params.text_encoder:q} --resolutions {params.resolutions} --batch-size {params.batch_size}"
        " --seed {params.seed} --processes {params.processes} > {log:q} 2>&1"
