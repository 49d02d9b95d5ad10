# The tiny preset trains its own small VAE on its images (the paper preset uses the SDXL VAE instead).
rule train_vae:
    input:
        lambda w: f"{RUN}/data/{config['vae']['train']['dataset']}/mds",
    output:
        directory(f"{RUN}/vae"),
    params:
        options=lambda w: cli_options({"latent-channels": config["vae"]["latent_channels"],
                                       **{k: v for k, v in config["vae"]["train"].items() if k != "dataset"}}),
        seed=config["seed"],
    log:
        f"{RUN}/logs/train_vae.log",
    benchmark:
        f"{RUN}/benchmarks/train_vae.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit train-vae --input {input:q} --out {output:q} --seed {params.seed} {params.options} > {log:q} 2>&1"
