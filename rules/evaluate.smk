# Evaluation of each stage in `eval.stages` at its own resolution: a seeded caption sample shared by the stages,
# generated images, the Fréchet distance (FID with Inception; the tiny preset uses EfficientNet-Lite0 features and
# says so) against reference statistics of that resolution, read beside two context values (the reference images'
# two halves, their VAE reconstructions), the CLIP score where configured, GenEval where configured (its detector
# runs in GenEval's own environment on a GPU node), and where the captions are drawn shapes (the tiny preset) their
# own GenEval: score-shapes on the samples, on a floor (the same weights with shuffled captions) and on two ceilings.
from snakemake.logging import logger


wildcard_constraints:
    res=r"\d+",


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


# the floor's prompts: the same caption sample, each caption moved to another image by a seeded derangement
rule eval_captions_shuffled:
    input:
        eval_source,
    output:
        f"{EVAL}/captions_shuffled.jsonl",
    params:
        source=lambda w, input: os.path.dirname(input[0]),
        num=config["eval"]["num_captions"],
        seed=config["eval"]["caption_seed"],
        shuffle=config["eval"].get("shuffle_seed", 0),
    log:
        f"{RUN}/logs/eval/captions_shuffled.log",
    benchmark:
        f"{RUN}/benchmarks/eval/captions_shuffled.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit eval-captions --source {params.source:q} --out {output:q} --num {params.num} --seed {params.seed}"
        " --shuffle {params.shuffle} > {log:q} 2>&1"


# the statistics of the captions' reference images at one resolution, and the Fréchet distance between two random
# halves of them (what two sets of real images score: the number a perfect model is read against)
rule fid_reference_stats:
    input:
        source=eval_source,
        captions=f"{EVAL}/captions.jsonl",
    output:
        stats=f"{EVAL}/reference/{{res}}px/stats.npz",
        halves=f"{EVAL}/reference/{{res}}px/fd_halves.json",
    params:
        images=lambda w, input: os.path.dirname(input.source),
        features=feature_options,
    log:
        f"{RUN}/logs/eval/reference_stats_{{res}}px.log",
    benchmark:
        f"{RUN}/benchmarks/eval/reference_stats_{{res}}px.tsv"
    threads: EVAL_THREADS
    resources:
        gpu=EVAL_GPUS,
        mem_mb=16000 if EVAL_GPUS else 4000,
        runtime=60,
        **placement(EVAL_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit fid-stats --images {params.images:q} --captions {input.captions:q} --resolution {wildcards.res}"
        " --out {output.stats:q} --halves {output.halves:q} {params.features} > {log:q} 2>&1"


# the reference images as the statistics see them (centre-cropped to the resolution), named by caption index:
# `vae`, all of them through the VAE (a GPU job at the paper's size); `grid`, the first few for the report's grid
rule reference_images:
    input:
        source=eval_source,
        captions=f"{EVAL}/captions.jsonl",
        vae=vae_input(),
    output:
        manifest=f"{EVAL}/reference/{{res}}px/vae/generation.json",
    params:
        source=lambda w, input: os.path.dirname(input.source),
        out=lambda w, output: os.path.dirname(output.manifest),
        options=lambda w: cli_options({"vae": vae_argument()}),
    log:
        f"{RUN}/logs/eval/reference_vae_{{res}}px.log",
    benchmark:
        f"{RUN}/benchmarks/eval/reference_vae_{{res}}px.tsv"
    threads: EVAL_THREADS
    resources:
        gpu=EVAL_GPUS,
        mem_mb=16000 if EVAL_GPUS else 4000,
        runtime=60,
        **placement(EVAL_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit reference-images --source {params.source:q} --captions {input.captions:q}"
        " --resolution {wildcards.res} --out {params.out:q} {params.options} > {log:q} 2>&1"


use rule reference_images as reference_grid with:
    input:
        source=eval_source,
        captions=f"{EVAL}/captions.jsonl",
    output:
        manifest=f"{EVAL}/reference/{{res}}px/grid/generation.json",
    params:
        source=lambda w, input: os.path.dirname(input.source),
        out=lambda w, output: os.path.dirname(output.manifest),
        options=cli_options({"num": GRID_CAPTIONS}),
    log:
        f"{RUN}/logs/eval/reference_grid_{{res}}px.log",
    benchmark:
        f"{RUN}/benchmarks/eval/reference_grid_{{res}}px.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        **placement(),


# the Fréchet distance of the VAE's reconstructions: how far the VAE alone moves the reference images
rule fid_vae:
    input:
        manifest=f"{EVAL}/reference/{{res}}px/vae/generation.json",
        reference=f"{EVAL}/reference/{{res}}px/stats.npz",
    output:
        f"{EVAL}/reference/{{res}}px/fd_vae.json",
    params:
        samples=lambda w, input: os.path.dirname(input.manifest),
        features=feature_options,
    log:
        f"{RUN}/logs/eval/fd_vae_{{res}}px.log",
    benchmark:
        f"{RUN}/benchmarks/eval/fd_vae_{{res}}px.tsv"
    threads: EVAL_THREADS
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


# The images are drawn in `eval.parts` jobs, each a range of whole batches into its own folder (image i is seeded by
# i alone: the split changes no image), which merge_samples joins into one folder for FID and GenEval. A job cut
# short (time limit, preemption, a lost node) is retried and draws only the images still missing. The shuffled
# captions' images (the floor) are drawn the same way, image i from the same noise as the true caption's.
GENERATION_RETRIES = 2


rule generate_eval_samples:
    input:
        checkpoint=lambda w: evaluated_weights(w.stage),
        captions=lambda w: f"{EVAL}/captions{'_shuffled' if w.parts_dir == SAMPLE_PARTS['shuffled'] else ''}.jsonl",
        vae=vae_input(),
    output:
        manifest=f"{EVAL}/{{stage}}/{{parts_dir}}/{{part}}/generation.json",
    wildcard_constraints:
        parts_dir=one_of([SAMPLE_PARTS["samples"], SAMPLE_PARTS["shuffled"]]),
    params:
        out=lambda w, output: os.path.dirname(output.manifest),
        sampling=sampling_options,
        parts=EVAL_PARTS,
    log:
        f"{RUN}/logs/eval/{{stage}}/generate_{{parts_dir}}/{{part}}.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{stage}}/generate_{{parts_dir}}/{{part}}.tsv"
    threads: EVAL_THREADS
    retries: GENERATION_RETRIES
    resources:
        gpu=EVAL_GPUS,
        mem_mb=32000 if EVAL_GPUS else 4000,
        runtime=generation_runtime(config["eval"]["num_captions"]),
        **placement(EVAL_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit generate --captions {input.captions:q} --out {params.out:q} --checkpoint {input.checkpoint:q}"
        " --part {wildcards.part} --parts {params.parts} {params.sampling} > {log:q} 2>&1"


rule merge_samples:
    input:
        lambda w: expand(f"{EVAL}/{w.stage}/{SAMPLE_PARTS[w.images]}/{{part}}/generation.json", part=range(EVAL_PARTS)),
    output:
        manifest=f"{EVAL}/{{stage}}/{{images}}/generation.json",
    wildcard_constraints:
        images=one_of(SAMPLE_PARTS),
    params:
        parts=lambda w, input: " ".join(f"--part {shlex.quote(os.path.dirname(path))}" for path in input),
        out=lambda w, output: os.path.dirname(output.manifest),
    log:
        f"{RUN}/logs/eval/{{stage}}/merge/{{images}}.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{stage}}/merge/{{images}}.tsv"
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
        manifest=f"{EVAL}/{{stage}}/samples/generation.json",
        reference=lambda w: f"{reference_dir(eval_resolution(w.stage))}/stats.npz",
    output:
        report(f"{EVAL}/{{stage}}/fid.json", caption="../config/report_caption_fid.rst", category="Evaluation"),
    params:
        samples=lambda w, input: os.path.dirname(input.manifest),
        features=feature_options,
    log:
        f"{RUN}/logs/eval/{{stage}}/fid.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{stage}}/fid.tsv"
    threads: EVAL_THREADS
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


# the preset's own CLIP (eval.clip.train), trained on its images at the evaluated resolutions: the tiny preset's
# CLIP score with no model hub. Its images are `ancient` as the VAE's are (a store folder's bytes are fixed by its name)
rule train_clip:
    input:
        lambda w: ancient(f"{STORE.mds_dir(CLIP['train']['dataset'])}/index.json"),
    output:
        directory(f"{EVAL}/clip_model"),
    params:
        images=lambda w, input: os.path.dirname(input[0]),
        options=lambda w: cli_options({"resolutions": EVAL_RESOLUTIONS,
                                       **{k: v for k, v in CLIP["train"].items() if k != "dataset"}}),
        seed=config["seed"],
    log:
        f"{RUN}/logs/eval/train_clip.log",
    benchmark:
        f"{RUN}/benchmarks/eval/train_clip.tsv"
    threads: EVAL_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit train-clip --input {params.images:q} --out {output:q} --seed {params.seed} {params.options}"
        " > {log:q} 2>&1"


rule clip_score:
    input:
        images=f"{EVAL}/{{stage}}/samples/generation.json",
        captions=f"{EVAL}/captions.jsonl",
        model=clip_model_input(),
    output:
        f"{EVAL}/{{stage}}/clip.json",
    params:
        images=lambda w, input: cli_options({"samples": os.path.dirname(input.images)}),
        model=clip_options,
    log:
        f"{RUN}/logs/eval/{{stage}}/clip.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{stage}}/clip.tsv"
    threads: EVAL_THREADS
    resources:
        gpu=EVAL_GPUS,
        mem_mb=16000 if EVAL_GPUS else 4000,
        runtime=60,
        **placement(EVAL_GPUS),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit clip-score {params.images} --captions {input.captions:q} --out {output:q} {params.model}"
        " > {log:q} 2>&1"


# the floor: the images drawn for the shuffled captions, scored against the TRUE captions
use rule clip_score as clip_score_floor with:
    input:
        images=f"{EVAL}/{{stage}}/shuffled/generation.json",
        captions=f"{EVAL}/captions.jsonl",
        model=clip_model_input(),
    output:
        f"{EVAL}/{{stage}}/clip_shuffled.json",
    log:
        f"{RUN}/logs/eval/{{stage}}/clip_shuffled.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{stage}}/clip_shuffled.tsv"


# the ceilings at a resolution: the captions' own images, and their VAE reconstructions
use rule clip_score as clip_score_ceiling with:
    input:
        images=lambda w: eval_source() if w.images == "reference" else f"{reference_dir(w.res)}/vae/generation.json",
        captions=f"{EVAL}/captions.jsonl",
        model=clip_model_input(),
    output:
        f"{EVAL}/reference/{{res}}px/clip_{{images,reference|vae}}.json",
    params:
        images=lambda w, input: cli_options({"reference": os.path.dirname(input.images), "resolution": w.res}
                                            if w.images == "reference" else {"samples": os.path.dirname(input.images)}),
        model=clip_options,
    log:
        f"{RUN}/logs/eval/clip_{{images}}_{{res}}px.log",
    benchmark:
        f"{RUN}/benchmarks/eval/clip_{{images}}_{{res}}px.tsv"


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
        checkpoint=lambda w: evaluated_weights(w.stage),
        metadata=f"{EVAL}/geneval/evaluation_metadata.jsonl",
        vae=vae_input(),
    output:
        manifest=f"{EVAL}/{{stage}}/{SAMPLE_PARTS['geneval/images']}/{{part}}/generation.json",
    params:
        out=lambda w, output: os.path.dirname(output.manifest),
        sampling=sampling_options,
        per_prompt=GENEVAL_PER_PROMPT,
        parts=EVAL_PARTS,
    log:
        f"{RUN}/logs/eval/{{stage}}/geneval_generate/{{part}}.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{stage}}/geneval_generate/{{part}}.tsv"
    threads: EVAL_THREADS
    retries: GENERATION_RETRIES
    resources:
        gpu=EVAL_GPUS,
        mem_mb=32000 if EVAL_GPUS else 4000,
        runtime=generation_runtime(GENEVAL_PROMPTS * GENEVAL_PER_PROMPT),
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
        f"{EVAL}/{{stage}}/geneval/images/generation.json",
    output:
        f"{EVAL}/{{stage}}/geneval/results.jsonl",
    params:
        images=lambda w, input: os.path.dirname(input[0]),
        evaluator=lambda w: os.path.join(config["eval"]["geneval"]["repo"], "evaluation", "evaluate_images.py"),
        detector=lambda w: config["eval"]["geneval"]["detector"],
    log:
        f"{RUN}/logs/eval/{{stage}}/geneval_score.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{stage}}/geneval_score.tsv"
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
        results=f"{EVAL}/{{stage}}/geneval/results.jsonl",
        manifest=f"{EVAL}/{{stage}}/geneval/images/generation.json",
    output:
        report(f"{EVAL}/{{stage}}/geneval.json", caption="../config/report_caption_geneval.rst", category="Evaluation"),
    log:
        f"{RUN}/logs/eval/{{stage}}/geneval_summary.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{stage}}/geneval_summary.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit geneval-summary --results {input.results:q} --out {output:q} --manifest {input.manifest:q}"
        " > {log:q} 2>&1"


# a stage's samples, and its floor (the images drawn for the shuffled captions), scored against the TRUE captions
rule score_shapes:
    input:
        manifest=f"{EVAL}/{{stage}}/{{images}}/generation.json",
        captions=f"{EVAL}/captions.jsonl",
    output:
        summary=f"{EVAL}/{{stage}}/shapes/{{images}}.json",
        results=f"{EVAL}/{{stage}}/shapes/{{images}}.jsonl",
    wildcard_constraints:
        images="samples|shuffled",
    params:
        samples=lambda w, input: os.path.dirname(input.manifest),
    log:
        f"{RUN}/logs/eval/{{stage}}/shapes_{{images}}.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{stage}}/shapes_{{images}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
        **placement(),
    conda:
        "../envs/microdit.yaml"
    shell:
        "microdit score-shapes --captions {input.captions:q} --samples {params.samples:q} --out {output.summary:q}"
        " --results {output.results:q} > {log:q} 2>&1"


# the ceilings at a resolution: the captions' own images, and those images through the VAE
rule score_shapes_ceiling:
    input:
        source=eval_source,
        captions=f"{EVAL}/captions.jsonl",
        vae=lambda w: vae_input() if w.images == "vae" else [],
    output:
        summary=f"{EVAL}/reference/{{res}}px/shapes/{{images}}.json",
        results=f"{EVAL}/reference/{{res}}px/shapes/{{images}}.jsonl",
    wildcard_constraints:
        images="reference|vae",
    params:
        reference=lambda w, input: os.path.dirname(input.source),
        options=lambda w: cli_options({"resolution": w.res, **({"vae": vae_argument()} if w.images == "vae" else {})}),
    log:
        f"{RUN}/logs/eval/shapes_{{images}}_{{res}}px.log",
    benchmark:
        f"{RUN}/benchmarks/eval/shapes_{{images}}_{{res}}px.tsv"
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
