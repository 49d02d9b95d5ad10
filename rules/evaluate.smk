# Evaluation of one stage's final weights: a seeded caption sample, generated images, reference statistics of the
# real images, the Fréchet distance (FID with Inception; the tiny preset uses EfficientNet-Lite0 features and says
# so), GenEval where configured (its detector runs in GenEval's own environment on a GPU node), and where the
# captions are drawn shapes (the tiny preset) their own GenEval: score-shapes on the samples and on two ceilings.
from snakemake.logging import logger


rule eval_captions:
    input:
        eval_source,
    output:
        f"{EVAL}/captions.jsonl",
    params:
        source=lambda w, input: os.path.dirname(input[0]),
        num=config["eval"]["num_captions"],
        seed=config["eval"]["caption_seed"],
    log:
        f"{RUN}/logs/eval/captions.log",
    benchmark:
        f"{RUN}/benchmarks/eval/captions.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit eval-captions --source {params.source:q} --out {output:q} --num {params.num} --seed {params.seed}"
        " > {log:q} 2>&1"


rule fid_reference_stats:
    input:
        source=eval_source,
        captions=f"{EVAL}/captions.jsonl",
    output:
        f"{EVAL}/reference_stats.npz",
    params:
        images=lambda w, input: os.path.dirname(input.source),
        resolution=config["eval"]["resolution"],
        features=feature_options,
    log:
        f"{RUN}/logs/eval/reference_stats.log",
    benchmark:
        f"{RUN}/benchmarks/eval/reference_stats.tsv"
    threads: 4 if EVAL_GPUS else 2
    resources:
        gpu=EVAL_GPUS,
        mem_mb=16000 if EVAL_GPUS else 4000,
        runtime=60,
        **placement(EVAL_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit fid-stats --images {params.images:q} --captions {input.captions:q} --resolution {params.resolution}"
        " --out {output:q} {params.features} > {log:q} 2>&1"


# The images are drawn in `eval.parts` jobs, each a range of whole batches into its own folder (image i is seeded by
# i alone: the split changes no image), which merge_samples joins into one folder for FID and GenEval. A job cut
# short (time limit, preemption, a lost node) is retried and draws only the images still missing.
GENERATION_RETRIES = 2


rule generate_eval_samples:
    input:
        checkpoint=evaluated_weights(),
        captions=f"{EVAL}/captions.jsonl",
        vae=vae_input(),
    output:
        manifest=f"{EVAL}/{SAMPLE_PARTS['samples']}/{{part}}/generation.json",
    params:
        out=lambda w, output: os.path.dirname(output.manifest),
        sampling=sampling_options,
        parts=EVAL_PARTS,
    log:
        f"{RUN}/logs/eval/generate/{{part}}.log",
    benchmark:
        f"{RUN}/benchmarks/eval/generate/{{part}}.tsv"
    threads: 4 if EVAL_GPUS else 2
    retries: GENERATION_RETRIES
    resources:
        gpu=EVAL_GPUS,
        mem_mb=32000 if EVAL_GPUS else 4000,
        runtime=generation_minutes(-(-config["eval"]["num_captions"] // EVAL_PARTS), config["eval"]["steps"],
                                   config["eval"]["resolution"]),
        **placement(EVAL_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit generate --captions {input.captions:q} --out {params.out:q} --checkpoint {input.checkpoint:q}"
        " --part {wildcards.part} --parts {params.parts} {params.sampling} > {log:q} 2>&1"


rule merge_samples:
    input:
        lambda w: expand(f"{EVAL}/{SAMPLE_PARTS[w.images]}/{{part}}/generation.json", part=range(EVAL_PARTS)),
    output:
        manifest=f"{EVAL}/{{images}}/generation.json",
    wildcard_constraints:
        images=one_of(SAMPLE_PARTS),
    params:
        parts=lambda w, input: " ".join(f"--part {shlex.quote(os.path.dirname(path))}" for path in input),
        out=lambda w, output: os.path.dirname(output.manifest),
    log:
        f"{RUN}/logs/eval/merge/{{images}}.log",
    benchmark:
        f"{RUN}/benchmarks/eval/merge/{{images}}.tsv"
    resources:
        mem_mb=1000,
        runtime=30,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit merge-samples {params.parts} --out {params.out:q} > {log:q} 2>&1"


rule fid:
    input:
        manifest=f"{EVAL}/samples/generation.json",
        reference=f"{EVAL}/reference_stats.npz",
    output:
        report(f"{EVAL}/fid.json", caption="../config/report_caption_fid.rst", category="Evaluation"),
    params:
        samples=lambda w, input: os.path.dirname(input.manifest),
        features=feature_options,
    log:
        f"{RUN}/logs/eval/fid.log",
    benchmark:
        f"{RUN}/benchmarks/eval/fid.tsv"
    threads: 4 if EVAL_GPUS else 2
    resources:
        gpu=EVAL_GPUS,
        mem_mb=16000 if EVAL_GPUS else 4000,
        runtime=60,
        **placement(EVAL_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit fid --samples {params.samples:q} --reference-stats {input.reference:q} --out {output:q}"
        " {params.features} > {log:q} 2>&1"


rule geneval_metadata:
    output:
        f"{EVAL}/geneval/evaluation_metadata.jsonl",
    log:
        f"{RUN}/logs/eval/geneval_metadata.log",
    benchmark:
        f"{RUN}/benchmarks/eval/geneval_metadata.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit geneval-metadata --out {output:q} > {log:q} 2>&1"


rule geneval_generate:
    input:
        checkpoint=evaluated_weights(),
        metadata=f"{EVAL}/geneval/evaluation_metadata.jsonl",
        vae=vae_input(),
    output:
        manifest=f"{EVAL}/{SAMPLE_PARTS['geneval/images']}/{{part}}/generation.json",
    params:
        out=lambda w, output: os.path.dirname(output.manifest),
        sampling=sampling_options,
        per_prompt=GENEVAL_PER_PROMPT,
        parts=EVAL_PARTS,
    log:
        f"{RUN}/logs/eval/geneval_generate/{{part}}.log",
    benchmark:
        f"{RUN}/benchmarks/eval/geneval_generate/{{part}}.tsv"
    threads: 4 if EVAL_GPUS else 2
    retries: GENERATION_RETRIES
    resources:
        gpu=EVAL_GPUS,
        mem_mb=32000 if EVAL_GPUS else 4000,
        runtime=generation_minutes(-(-GENEVAL_PROMPTS * GENEVAL_PER_PROMPT // EVAL_PARTS), config["eval"]["steps"],
                                   config["eval"]["resolution"]),
        **placement(EVAL_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit geneval-generate --metadata {input.metadata:q} --out {params.out:q} --checkpoint {input.checkpoint:q}"
        " --images-per-prompt {params.per_prompt} --part {wildcards.part} --parts {params.parts} {params.sampling}"
        " > {log:q} 2>&1"


# GenEval's detector (mmdet 2.x, old torch) cannot share microdit's environment: the rule only works with conda
# deployment, which the profiles leave off so that the tiny preset and CI need no conda.
if "geneval" in config["eval"] and workflow.is_main_process and not any(
        str(method) == "conda" for method in workflow.deployment_settings.deployment_method):
    logger.warning("eval.geneval is set: rule geneval_score needs its own environment (envs/geneval.yaml); run with "
                   "--software-deployment-method conda, or it fails")


rule geneval_score:
    input:
        f"{EVAL}/geneval/images/generation.json",
    output:
        f"{EVAL}/geneval/results.jsonl",
    params:
        images=lambda w, input: os.path.dirname(input[0]),
        evaluator=lambda w: os.path.join(config["eval"]["geneval"]["repo"], "evaluation", "evaluate_images.py"),
        detector=lambda w: config["eval"]["geneval"]["detector"],
    log:
        f"{RUN}/logs/eval/geneval_score.log",
    benchmark:
        f"{RUN}/benchmarks/eval/geneval_score.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=30 + GENEVAL_PROMPTS * GENEVAL_PER_PROMPT // 60,  # about a second per image through the detector
        **placement(1),
    conda:
        "../envs/geneval.yaml"
    shell:
        "python {params.evaluator:q} {params.images:q} --outfile {output:q} --model-path {params.detector:q}"
        " > {log:q} 2>&1"


rule geneval_summary:
    input:
        results=f"{EVAL}/geneval/results.jsonl",
        manifest=f"{EVAL}/geneval/images/generation.json",
    output:
        report(f"{EVAL}/geneval.json", caption="../config/report_caption_geneval.rst", category="Evaluation"),
    log:
        f"{RUN}/logs/eval/geneval_summary.log",
    benchmark:
        f"{RUN}/benchmarks/eval/geneval_summary.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit geneval-summary --results {input.results:q} --out {output:q} --manifest {input.manifest:q}"
        " > {log:q} 2>&1"


rule score_shapes:
    input:
        manifest=f"{EVAL}/samples/generation.json",
        captions=f"{EVAL}/captions.jsonl",
    output:
        summary=f"{EVAL}/shapes/samples.json",
        results=f"{EVAL}/shapes/samples.jsonl",
    params:
        samples=lambda w, input: os.path.dirname(input.manifest),
    log:
        f"{RUN}/logs/eval/shapes_samples.log",
    benchmark:
        f"{RUN}/benchmarks/eval/shapes_samples.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit score-shapes --captions {input.captions:q} --samples {params.samples:q} --out {output.summary:q}"
        " --results {output.results:q} > {log:q} 2>&1"


# the ceilings: the captions' own images at the evaluation resolution, and those images through the VAE
rule score_shapes_ceiling:
    input:
        source=eval_source,
        captions=f"{EVAL}/captions.jsonl",
        vae=lambda w: vae_input() if w.images == "vae" else [],
    output:
        summary=f"{EVAL}/shapes/{{images}}.json",
        results=f"{EVAL}/shapes/{{images}}.jsonl",
    wildcard_constraints:
        images="reference|vae",
    params:
        reference=lambda w, input: os.path.dirname(input.source),
        options=lambda w: cli_options({"resolution": config["eval"]["resolution"],
                                       **({"vae": vae_argument()} if w.images == "vae" else {})}),
    log:
        f"{RUN}/logs/eval/shapes_{{images}}.log",
    benchmark:
        f"{RUN}/benchmarks/eval/shapes_{{images}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit score-shapes --captions {input.captions:q} --reference {params.reference:q} {params.options}"
        " --out {output.summary:q} --results {output.results:q}"
        " > {log:q} 2>&1"
