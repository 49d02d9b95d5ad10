# The tiny preset trains its own small VAE on its images (the paper preset uses the SDXL VAE instead). It decides the
# latents, so it lives in the store. Its images are `ancient`: a store folder's bytes are fixed by its name, so the
# same images split into other parts (a newer index) retrain nothing.
rule train_vae:
    input:
        lambda w: ancient(f"{STORE.mds_dir(config['vae']['train']['dataset'])}/index.json"),
    output:
        directory(f"{STORE.root}/vae/{{vae}}"),
    params:
        images=lambda w, input: os.path.dirname(input[0]),
        options=lambda w: cli_options({"latent-channels": config["vae"]["latent_channels"],
                                       **{k: v for k, v in config["vae"]["train"].items() if k != "dataset"}}),
        seed=config["seed"],
    priority: CHAIN_PRIORITY
    log:
        f"{STORE.root}/logs/train_vae/{{vae}}.log",
    benchmark:
        f"{STORE.root}/benchmarks/train_vae/{{vae}}.tsv"
    wildcard_constraints:  # this config's VAE only; without vae.train, "(?!)" matches nothing
        vae=re.escape(STORE.vae_key()) if "train" in config["vae"] else "(?!)",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit train-vae --input {params.images:q} --out {output:q} --seed {params.seed} {params.options}"
        " > {log:q} 2>&1"
