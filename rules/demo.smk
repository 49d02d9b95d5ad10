# The model path end to end on CPU: drawn pictures -> tiny VAE + MiniLM -> nano MicroDiT -> samples.
rule demo:
    output:
        grid=f"{RUN}/demo/grid.png",
        checkpoint=f"{RUN}/demo/dit.safetensors",
        summary=f"{RUN}/demo/demo.json",
    params:
        out=lambda wildcards, output: os.path.dirname(output.grid),
        steps=config["demo"]["steps"],
        image_size=config["demo"]["image_size"],
        seed=config["seed"],
    log:
        f"{RUN}/logs/demo.log",
    benchmark:
        f"{RUN}/benchmarks/demo.tsv"
    threads: 2
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit demo --out {params.out:q} --steps {params.steps} --image-size {params.image_size}"
        " --seed {params.seed} > {log:q} 2>&1"
