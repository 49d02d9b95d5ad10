# A grid of the fixed prompts from each stage's final weights (what the report shows per stage).
rule stage_samples:
    input:
        checkpoint=f"{RUN}/train/{{stage}}/final.safetensors",
        vae=vae_input(),
    output:
        report(f"{RUN}/samples/{{stage}}.png", caption="../config/report_caption_samples.rst", category="Samples"),
    params:
        prompts=" ".join(f"--prompt {shlex.quote(p)}" for p in config["samples"]["prompts"]),
        vae=vae_argument,
        text_encoder=TEXT_ENCODER,
        steps=config["samples"]["steps"],
        guidance=config["samples"]["guidance_scale"],
        seed=config["samples"]["seed"],
    log:
        f"{RUN}/logs/samples/{{stage}}.log",
    benchmark:
        f"{RUN}/benchmarks/samples/{{stage}}.tsv"
    threads: EVAL_THREADS
    resources:
        gpu=EVAL_GPUS,
        mem_mb=32000 if EVAL_GPUS else 4000,
        runtime=30,
        **placement(EVAL_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit sample --checkpoint {input.checkpoint:q} {params.prompts} --vae {params.vae:q}"
        " --text-encoder {params.text_encoder:q} --steps {params.steps} --guidance {params.guidance}"
        " --seed {params.seed} --out {output:q} > {log:q} 2>&1"
