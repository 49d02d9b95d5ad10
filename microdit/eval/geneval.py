"""GenEval (Ghosh et al. 2023): its prompt metadata, the image layout its official evaluator reads, and the summary
of the evaluator's `results.jsonl`. The detector itself (mmdet Mask2Former + CLIP) runs in GenEval's own environment
(envs/geneval.yaml) on a GPU node; nothing here imitates it.

Layout: <dir>/<5-digit prompt index>/metadata.jsonl (the prompt's JSON object) and .../samples/<4-digit>.png.
"""
import json
import os
import shutil
from pathlib import Path

from microdit.errors import UserError
from microdit.eval.generate import generate_images
from microdit.files import atomic_write, read_jsonl, sha256_file

UPSTREAM_COMMIT = "af4902f24d3ca90ebbb446dd9891a59e0f82725f"
METADATA_URL = (f"https://raw.githubusercontent.com/djghosh13/geneval/{UPSTREAM_COMMIT}"
                "/prompts/evaluation_metadata.jsonl")
METADATA_SHA256 = "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"
NUM_PROMPTS = 553
IMAGES_PER_PROMPT = 4
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def fetch_metadata(out: str | os.PathLike, source: str | None = None) -> Path:
    """The pinned `evaluation_metadata.jsonl` at `out`, from a local copy or the upstream commit, sha256-checked."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.download")
    if source:
        if not Path(source).is_file():
            raise UserError(f"--source {source}: no such file")
        shutil.copyfile(source, staging)
    else:
        from microdit.data.sources.fetch import http_download

        staging.unlink(missing_ok=True)
        http_download(METADATA_URL, staging)
    digest = sha256_file(staging)
    if digest != METADATA_SHA256:
        staging.unlink()
        raise UserError(f"{source or METADATA_URL}: sha256 {digest} is not the pinned GenEval metadata "
                        f"({METADATA_SHA256}, commit {UPSTREAM_COMMIT})")
    os.replace(staging, out)
    return out


def read_metadata(path: str | os.PathLike) -> list[dict]:
    rows = read_jsonl(path, "GenEval metadata")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or row.get("tag") not in TASKS:
            raise UserError(f"{path}:{number}: expected an object with a 'prompt' and a 'tag' in {TASKS}")
    return rows


def prompt_dir(root: str | os.PathLike, prompt_index: int) -> Path:
    return Path(root) / f"{prompt_index:05d}"


def sample_path(root: str | os.PathLike, image_index: int, images_per_prompt: int = IMAGES_PER_PROMPT) -> Path:
    """Image i = sample i mod k of prompt i div k."""
    prompt, sample = divmod(image_index, images_per_prompt)
    return prompt_dir(root, prompt) / "samples" / f"{sample:04d}.png"


def write_prompt_dirs(root: str | os.PathLike, metadata: list[dict]) -> None:
    for index, row in enumerate(metadata):
        directory = prompt_dir(root, index)
        (directory / "samples").mkdir(parents=True, exist_ok=True)
        text = json.dumps(row) + "\n"  # the evaluator json-loads it: never a half-written one
        atomic_write(directory / "metadata.jsonl", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def generate_geneval(model, metadata: list[dict], root: str | os.PathLike,
                     images_per_prompt: int = IMAGES_PER_PROMPT, **sampling) -> dict:
    """The prompt folders, then images_per_prompt images per prompt (resumable, see generate.generate_images)."""
    write_prompt_dirs(root, metadata)
    prompts = [row["prompt"] for row in metadata for _ in range(images_per_prompt)]
    return generate_images(model, prompts, lambda i: sample_path(root, i, images_per_prompt), **sampling)


def summarize(results_path: str | os.PathLike) -> dict:
    """Scores from the official evaluator's results.jsonl, computed as GenEval's summary_scores.py does: per task
    the fraction of correct images, overall the unweighted mean over the six tasks, prompts grouped by their
    metadata. With a task missing (a run over some of the prompts) there is no overall score: the mean over the
    tasks present is `overall_of_present_tasks`, which is not comparable with published GenEval scores."""
    import pandas as pd

    df = pd.DataFrame(read_jsonl(results_path, "GenEval results.jsonl"))  # pandas reads a missing path as JSON text
    missing = {"tag", "correct", "metadata"} - set(df.columns)
    if df.empty or missing:
        raise UserError(f"{results_path}: not a GenEval results.jsonl (missing columns {sorted(missing)} or no rows)")
    unknown = sorted(set(df["tag"]) - set(TASKS))
    if unknown:
        raise UserError(f"{results_path}: unknown task tags {unknown}; expected {TASKS}")
    df["correct"] = df["correct"].astype(bool)
    by_task = df.groupby("tag")["correct"]
    tasks = {tag: {"accuracy": float(by_task.mean()[tag]), "correct": int(by_task.sum()[tag]),
                   "images": int(by_task.size()[tag])} for tag in TASKS if tag in by_task.groups}
    present = sum(t["accuracy"] for t in tasks.values()) / len(tasks)
    missing_tasks = [tag for tag in TASKS if tag not in tasks]
    return {
        "overall": None if missing_tasks else present,
        "overall_of_present_tasks": present,
        "tasks": tasks,
        "missing_tasks": missing_tasks,
        "num_images": len(df),
        "num_prompts": int(df["metadata"].nunique()),
        "correct_images": float(df["correct"].mean()),
        "correct_prompts": float(df.groupby("metadata")["correct"].any().mean()),
        "results_file": str(results_path),
    }
