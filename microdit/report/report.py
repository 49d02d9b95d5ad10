"""report.html: a summary, the stages' loss curves on one step axis, each prompt's samples per stage, the evaluated
stages' scores side by side (FID or Fréchet distance with its context, CLIP score, GenEval, the drawn-shapes scores
between their floor and ceilings) next to the paper's numbers, evaluation samples labelled with their captions
beside the reference images, the cost ledger and the provenance of it all, in one self-contained page (images
inlined as base64) built only from declared inputs.

Optional inputs may be absent (a stage without a grid shows "no samples"); an input that is named but unreadable is
an error, so a broken upstream step is not silently hidden.
"""
import datetime
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from microdit.errors import UserError
from microdit.eval.geneval import TASKS
from microdit.files import atomic_write, read_json
from PIL import Image

from microdit.report.html import STYLE, esc, fmt, png_tag, read_bytes, shown_path, table
from microdit.report.ledger import PAPER_PRICE_PER_GPU_HOUR, PAPER_TOTAL_DOLLARS, ledger_row, totals
from microdit.report.samples import samples_section

# The README's scores for the four released checkpoints, in its order (SPEC §3.8).
PAPER_MODELS = (
    ("dit_4_channel_22M_real_only_data", 12.72, 0.46),
    ("dit_4_channel_37M_real_and_synthetic_data", 12.66, 0.46),
    ("dit_16_channel_37M_real_and_synthetic_data", 13.04, 0.40),
    ("dit_4_channel_0.5B_synthetic_data", 13.26, 0.52),
)

@dataclass
class ReportInputs:
    title: str
    stages: list[str]
    metrics: dict[str, Path] = field(default_factory=dict)      # stage -> metrics JSONL
    train_stats: dict[str, Path] = field(default_factory=dict)  # stage -> train_stats.json
    grids: dict[str, Path] = field(default_factory=dict)        # stage -> sample grid PNG
    fid: dict[str, Path] = field(default_factory=dict)          # evaluated stage -> fid.json
    clip: dict[str, Path] = field(default_factory=dict)         # evaluated stage -> clip.json
    clip_floor: dict[str, Path] = field(default_factory=dict)   # evaluated stage -> ... of its shuffled captions
    clip_ceiling: dict[str, Path] = field(default_factory=dict)  # label -> ... of reference images, VAE
    geneval: dict[str, Path] = field(default_factory=dict)      # evaluated stage -> geneval.json
    fd_context: dict[str, Path] = field(default_factory=dict)   # label -> a Fréchet distance to read the others by
    shapes: dict[str, Path] = field(default_factory=dict)       # evaluated stage -> score-shapes of its samples
    shapes_floor: dict[str, Path] = field(default_factory=dict)  # evaluated stage -> ... of its shuffled captions
    shapes_ceiling: dict[str, Path] = field(default_factory=dict)  # label -> ... of reference images, VAE
    eval_samples: dict[str, Path] = field(default_factory=dict)  # evaluated stage -> its samples folder
    eval_captions: Path | None = None                           # their caption JSONL
    grid_reference: Path | None = None                          # the captions' reference images, by index
    grid_captions: int = 8                                      # captions in the labelled grid
    stage_configs: dict[str, Path] = field(default_factory=dict)  # stage -> its resolved stage.yaml
    sample_prompts: list[str] = field(default_factory=list)     # the grids' prompts, in grid order
    price_per_gpu_hour: float = PAPER_PRICE_PER_GPU_HOUR


def stage_metrics(inputs: ReportInputs) -> dict:
    from microdit.report.plots import read_metrics

    return {stage: read_metrics(inputs.metrics[stage]) for stage in inputs.stages if stage in inputs.metrics}


def last_value(df, column: str):
    """The column's last logged value, or None."""
    values = df[column].dropna() if column in df else []
    return float(values.iloc[-1]) if len(values) else None


def lr_text(df) -> str:
    from microdit.report.plots import lr_changes

    first, last = df["lr"].iloc[0], df["lr"].iloc[-1]
    return f"{first:.3g} → {last:.3g}" if lr_changes(df) else f"{first:.3g}, constant"


def training_section(inputs: ReportInputs, frames: dict) -> str:
    from microdit.report.plots import on_global_steps, training_figure

    logged = on_global_steps({stage: df for stage, df in frames.items() if len(df)})
    figure = (png_tag(training_figure(logged), "training and held-out loss of every stage") if logged
              else '<p class="missing">no training lines</p>')
    rows = []
    for stage in inputs.stages:
        df = logged.get(stage)
        if df is None:
            rows.append([esc(stage)] + ['<span class="missing">no metrics</span>'] + [""] * 4)
            continue
        held_out = df["val_loss"].notna().sum() if "val_loss" in df else 0
        first, last = int(df["global_step"].min()), int(df["global_step"].max())
        rows.append([esc(stage), f"{first:,}–{last:,}", fmt(last_value(df, "loss"), ".4f"),
                     fmt(last_value(df, "val_loss"), ".4f") + (f" ({held_out} evaluations)" if held_out else ""),
                     fmt(last_value(df, "val_loss_ema"), ".4f"), lr_text(df)])
    header = ["stage", "global steps logged", "last training loss", "last held-out loss", "held-out, EMA weights",
              "learning rate"]
    return ("<h2>Training</h2>" + figure + table(header, rows) +
            '<p class="note">Held-out loss: unmasked, each held-out sample at a fixed noise level, so the points of '
            "a stage are comparable with each other.</p>")


def weights_name(score: dict) -> str:
    """Which export a score's images were drawn with, from the checkpoint its manifest names."""
    stem = Path(score.get("checkpoint", "")).stem
    return {"ema": "EMA", "final": "raw"}.get(stem, esc(stem) or "—")


def evaluation_table(inputs: ReportInputs) -> tuple[str, dict[str, dict], dict[str, dict]]:
    """One table: a row per evaluated stage, a column per metric (CLIP score, its shuffled-caption floor and GenEval
    only where computed), and below the stages the values the stages' are read against (the Fréchet distance's
    context, the CLIP score's ceilings), a row per label; with the GenEval and CLIP summaries read for it."""
    fids = {stage: read_json(path, "fid.json") for stage, path in inputs.fid.items()}
    clips = {stage: read_json(path, "clip.json") for stage, path in inputs.clip.items()}
    floors = {stage: read_json(path, "clip.json") for stage, path in inputs.clip_floor.items()}
    genevals = {stage: read_geneval(path) for stage, path in inputs.geneval.items()}
    context = {label: read_json(path, "Fréchet distance") for label, path in inputs.fd_context.items()}
    ceilings = {label: read_json(path, "clip.json") for label, path in inputs.clip_ceiling.items()}
    stages = list(dict.fromkeys([*fids, *clips, *genevals]))
    if not stages:
        return '<p class="missing">no evaluation results</p>', genevals, clips
    metric = next((f["metric"] for f in [*fids.values(), *context.values()] if "metric" in f), "FID")
    header = (["stage", "weights", esc(metric)] + (["CLIP score"] if clips else [])
              + (["CLIP score, shuffled captions"] if floors else []) + (["GenEval"] if genevals else [])
              + ["images", "px", "steps", "guidance"])

    def value(scores: dict, key: str) -> list[str]:  # the column's cell, if the table has the column
        return [fmt(scores[key].get("value"), ".2f") if key in scores else "—"] if scores else []

    rows = []
    for stage in stages:
        drawn = fids.get(stage) or clips.get(stage) or {}
        rows.append([esc(stage), weights_name(drawn), fmt(fids.get(stage, {}).get("value"), ".2f")]
                    + value(clips, stage) + value(floors, stage)
                    + ([geneval_overall(genevals[stage]) if stage in genevals else "—"] if genevals else [])
                    + [esc(drawn.get(key, "—")) for key in ("num_images", "resolution", "steps", "guidance")])
    for label in dict.fromkeys([*context, *ceilings]):
        score = context.get(label) or ceilings[label]
        rows.append([f"<em>{esc(label)}</em>", "—", fmt(context.get(label, {}).get("value"), ".2f")]
                    + [fmt(ceilings[label].get("value"), ".2f") if label in ceilings else "—"] * bool(clips)
                    + ["—"] * (bool(floors) + bool(genevals))
                    + [esc(score.get("num_images", "—")), esc(score.get("resolution", "—")), "—", "—"])
    return table(header, rows), genevals, clips


def read_geneval(path) -> dict:
    summary = read_json(path, "geneval.json")
    missing = [key for key in ("tasks", "correct_images", "correct_prompts") if key not in summary]
    if missing:
        raise UserError(f"{path}: not a GenEval summary from geneval-summary (no {', '.join(missing)})")
    return summary


def geneval_overall(summary: dict) -> str:
    """The overall score, which exists only when every task was scored (a run over some prompts has none)."""
    if summary.get("overall") is not None:
        return fmt(summary["overall"], ".2f")
    return f"— ({len(TASKS) - len(summary.get('missing_tasks', []))} of {len(TASKS)} tasks)"


def evaluation_section(inputs: ReportInputs) -> str:
    ours, genevals, clips = evaluation_table(inputs)
    paper = table(["released model", "FID (COCO 30K)", "GenEval"],
                  [[esc(name), f"{fid:.2f}", f"{gen:.2f}"] for name, fid, gen in PAPER_MODELS])
    section = (f'<h2>Evaluation</h2><div class="side"><div><h3>This run</h3>{ours}</div>'
               f"<div><h3>Paper (README of the released models)</h3>{paper}</div></div>"
               '<p class="note">Each stage is evaluated at its own resolution, on the same captions, against the '
               "reference statistics of that resolution. Only Inception scores from clean-fid are FIDs; the tiny "
               "preset reports a Fréchet distance in EfficientNet-Lite0 feature space, not comparable with FID.</p>")
    if inputs.fd_context:
        section += ('<p class="note">Read the Fréchet distance against the rows in italics. <em>Reference '
                    "images</em>: two random halves of the reference images against each other, what images "
                    "indistinguishable from the reference score with half as many images (the distance grows as "
                    "sets shrink, so a perfect model would score somewhat lower at the full count). <em>VAE "
                    "reconstructions</em>: the reference images through the VAE against their own statistics, what "
                    "the VAE alone costs (the same images, so lower than any independent set would score).</p>")
    if clips:
        section += clip_note(next(iter(clips.values())).get("model", ""), bool(inputs.clip_floor))
    if genevals:
        task_rows = [[esc(label)] + [fmt(g.get("tasks", {}).get(t, {}).get("accuracy"), ".2f") for t in TASKS]
                     + [geneval_overall(g), fmt(100 * g["correct_images"], ".1f") + " %",
                        fmt(100 * g["correct_prompts"], ".1f") + " %"] for label, g in genevals.items()]
        section += "<h3>GenEval by task</h3>" + table(
            ["stage", *TASKS, "overall", "correct images", "correct prompts"], task_rows)
    return section + shapes_section(inputs) + eval_grid_section(inputs)


def clip_note(model: str, floors: bool) -> str:
    trained = model.startswith("local-dir:")
    return ('<p class="note">CLIP score: 100 × the cosine of each image\'s and its caption\'s embeddings, floored at '
            f"0, averaged, by {esc(model)}"
            + (": the preset's own small CLIP (<code>microdit train-clip</code>, on its training images), so the "
               "scores compare within this run only, never with published CLIP scores" if trained else "")
            + (". Shuffled captions: the floor's images (each drawn for another caption) against the true captions; "
               "the ceilings in italics: the reference images and their VAE reconstructions" if floors else "")
            + ".</p>")


def shapes_section(inputs: ReportInputs) -> str:
    """The drawn-shapes scores: what each stage's samples follow of their captions, above its floor (the same
    weights drawing other captions' prompts, scored against the true ones), below the ceilings (the reference images
    and their VAE reconstructions, which a denoiser cannot pass)."""
    from microdit.eval.shapes import CATEGORIES

    scored = []
    for stage in inputs.stages:
        if stage in inputs.shapes:
            scored.append((f"{stage} samples", inputs.shapes[stage]))
        if stage in inputs.shapes_floor:
            scored.append((f"{stage}, shuffled captions (floor)", inputs.shapes_floor[stage]))
    scored += [(f"{label} (ceiling)", path) for label, path in inputs.shapes_ceiling.items()]
    if not scored:
        return ""
    rows = []
    for label, path in scored:
        summary = read_json(path, "score-shapes summary")
        tasks = summary.get("tasks", {})
        rows.append([esc(label)] + [fmt(100 * tasks[c]["accuracy"], ".1f") if c in tasks else "—" for c in CATEGORIES]
                    + [fmt(100 * summary["correct_images"], ".1f") if "correct_images" in summary else "—",
                       esc(summary.get("num_images", "—"))])
    return ("<h3>Prompt following (drawn shapes, % correct)</h3>" +
            table(["images", *CATEGORIES, "all right", "images scored"], rows) +
            '<p class="note"><code>microdit score-shapes</code> finds the background and each caption group by '
            "colour and judges each category as GenEval does, always against the true captions. The floor: the "
            "same weights and noise, each image drawn for another image's caption (a seeded derangement), so a "
            "stage that follows its prompts scores well above it. The ceilings: the reference images and their "
            "VAE reconstructions at that resolution; the samples cannot keep more than the VAE does.</p>")


def eval_grid_section(inputs: ReportInputs) -> str:
    """The first captions' evaluation samples of each stage, labelled with the caption, beside its reference image,
    each shown at 256 px (nearest-neighbour: a 32 px sample is not smoothed into something it is not)."""
    from microdit.eval.captions import read_caption_file
    from microdit.eval.generate import image_name
    from microdit.report.samples import cell

    if not inputs.eval_samples or inputs.eval_captions is None:
        return ""
    body = ""
    for row in read_caption_file(inputs.eval_captions)[: inputs.grid_captions]:
        name = image_name(row["index"])
        cells = []
        if inputs.grid_reference is not None:
            cells.append(cell(read_bytes(Path(inputs.grid_reference) / name, "reference image"), "reference"))
        for stage in (s for s in inputs.stages if s in inputs.eval_samples):
            data = read_bytes(inputs.eval_samples[stage] / name, "evaluation sample")
            with Image.open(io.BytesIO(data)) as image:
                cells.append(cell(data, f"{stage}, {image.width} px"))
        body += (f'<figure><figcaption>“{esc(row["caption"])}”</figcaption>'
                 f'<div class="cells">{"".join(cells)}</div></figure>')
    return ("<h3>Evaluation samples beside their reference images</h3>"
            f'<p class="note">The first {inputs.grid_captions} evaluation captions: the reference image the caption '
            "was drawn for, then each evaluated stage's sample for it.</p>" + body)


def ledger_section(inputs: ReportInputs) -> str:
    price = inputs.price_per_gpu_hour
    ledger = []
    for stage in inputs.stages:
        if stage in inputs.train_stats:
            stats = read_json(inputs.train_stats[stage], "train_stats.json")
            try:
                ledger.append(ledger_row(stage, stats, price))
            except (ValueError, TypeError) as err:
                raise UserError(f"{inputs.train_stats[stage]}: {err}") from None
    if not ledger:
        return '<h2>Cost ledger</h2><p class="missing">no train_stats.json given</p>'
    paper_hours = PAPER_TOTAL_DOLLARS / PAPER_PRICE_PER_GPU_HOUR
    paper = (f'<p class="note">Paper: {paper_hours:,.0f} H100-hours × ${PAPER_PRICE_PER_GPU_HOUR:.2f} = '
             f"${PAPER_TOTAL_DOLLARS:,.0f} for all four stages.</p>")
    t = totals(ledger)
    if not t["gpu_hours"]:  # a CPU run has no GPU time to price
        rows = [[esc(r.stage), f"{r.wall_hours * 60:.1f}", f"{r.steps:,}", f"{r.images_seen:,}",
                 f"{r.img_per_s:,.1f}", fmt(r.final_loss, ".4f")] for r in ledger]
        total = ["total", f"{t['wall_hours'] * 60:.1f}", f"{t['steps']:,}", f"{t['images_seen']:,}", "", ""]
        return ("<h2>Cost ledger</h2><p>A CPU run: no GPU time, so no GPU-hours or dollars.</p>" +
                table(["stage", "wall minutes", "steps", "images seen", "img/s", "final loss"], rows, total) + paper)
    rows = [[esc(r.stage), str(r.gpus), f"{r.wall_hours:.2f}", f"{r.gpu_hours:.2f}", f"{r.steps:,}",
             f"{r.images_seen:,}", f"{r.img_per_s:,.1f}", fmt(None if r.mfu is None else 100 * r.mfu, ".1f", "—")
             + ("" if r.mfu is None else " %"), fmt(r.final_loss, ".4f"), f"${r.dollars:,.2f}"] for r in ledger]
    total = ["total", "", f"{t['wall_hours']:.2f}", f"{t['gpu_hours']:.2f}", f"{t['steps']:,}",
             f"{t['images_seen']:,}", "", "", "", f"${t['dollars']:,.2f}"]
    header = ["stage", "GPUs", "wall hours", "GPU-hours", "steps", "images seen", "img/s", "MFU", "final loss",
              f"$ at ${price:.2f}/GPU-h"]
    return "<h2>Cost ledger</h2>" + table(header, rows, total) + plan_table(inputs) + paper


def plan_table(inputs: ReportInputs) -> str:
    """What `microdit plan` predicts for each stage as it ran (its stage.yaml, the GPU model its provenance names,
    the FLOPs per image its trainer counted), beside what it spent; only stages whose resolved config is given."""
    from microdit.plan import plan_of_run

    rows, unplanned = [], []
    for stage in inputs.stages:
        if stage in inputs.train_stats and stage in inputs.stage_configs:
            stats = read_json(inputs.train_stats[stage], "train_stats.json")
            try:
                planned = plan_of_run(stage, inputs.stage_configs[stage], stats, inputs.price_per_gpu_hour)
            except UserError as err:  # a config this code cannot plan (an older run's): the spend still shows
                unplanned.append(f"{esc(stage)}: {esc(err)}")
                continue
            spent = ledger_row(stage, stats, inputs.price_per_gpu_hour)
            if planned is not None and planned.gpu_hours is not None:
                rows.append([esc(stage), esc(planned.gpu), f"{planned.gpu_hours:.2f}", f"{spent.gpu_hours:.2f}",
                             f"${planned.dollars:,.2f}", f"${spent.dollars:,.2f}",
                             f"{spent.gpu_hours / planned.gpu_hours:.2f}"])
    note = f'<p class="note">Not planned: {"; ".join(unplanned)}.</p>' if unplanned else ""
    if not rows:
        return note
    return ("<h3>Planned and spent</h3>" +
            table(["stage", "planned on", "planned GPU-hours", "spent GPU-hours", "planned $", "spent $",
                   "spent / planned"], rows) +
            '<p class="note">Planned: <code>microdit plan</code> from the throughput measured in '
            "docs/benchmarks.md, for the stage's settings as it ran.</p>" + note)


def provenance_section(inputs: ReportInputs) -> str:
    """The settings behind the numbers above: each stage's config (the key fields; the file's hash stands for the
    rest), each score's generation settings, and the code that wrote this page."""
    from microdit.provenance import code_version
    from microdit.report.provenance import score_settings, stage_settings

    section = "<h2>Provenance</h2>"
    stages = {stage: stage_settings(inputs.stage_configs[stage]) for stage in inputs.stages
              if stage in inputs.stage_configs}
    if stages:
        names = list(dict.fromkeys(name for settings in stages.values() for name in settings))
        rows = [[esc(name)] + [esc(shown_path(settings.get(name, "—"))) for settings in stages.values()]
                for name in names]
        section += "<h3>Stage configs</h3>" + table(["setting", *map(esc, stages)], rows, wide=True)
    scores = {f"the Fréchet distance of {label}": score_settings(read_json(path, "fid.json"))
              for label, path in inputs.fid.items()}
    scores.update({f"GenEval of {label}": score_settings(read_json(path, "geneval.json").get("generation", {}))
                   for label, path in inputs.geneval.items()})
    for name, settings in scores.items():
        section += (f"<h3>How {esc(name)} was made</h3>"
                    + table(["setting", "value"], [[esc(k), esc(shown_path(v))] for k, v in settings.items()]))
    return section + f'<p class="note">Written by {esc(code_version())}.</p>'


def last_stage(scores: dict, stages: list[str]) -> list[tuple[str, Path]]:
    """[(stage, path)] of the last of `stages` that has a score (else the last label given), or []."""
    ordered = [name for name in stages if name in scores] or list(scores)
    return [(ordered[-1], scores[ordered[-1]])] if ordered else []


def summary_box(inputs: ReportInputs, frames: dict) -> str:
    """The run in a few lines: what, when, which code, and its headline numbers."""
    from microdit.provenance import code_version

    items = {"run": esc(inputs.title), "stages": esc(", ".join(inputs.stages))}
    stats = {stage: read_json(path, "train_stats.json") for stage, path in inputs.train_stats.items()}
    if stats:  # the day the last stage finished: its stats are written as it ends
        newest = max(os.path.getmtime(path) for path in inputs.train_stats.values())
        items["trained"] = datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).strftime("%Y-%m-%d")
    items["code"] = esc(code_version())
    last = next((frames[s] for s in reversed(inputs.stages) if s in frames and len(frames[s])), None)
    if last is not None and last_value(last, "val_loss") is not None:
        ema = last_value(last, "val_loss_ema")
        items["held-out loss"] = (fmt(last_value(last, "val_loss"), ".4f") +
                                  (f" (EMA weights {fmt(ema, '.4f')})" if ema is not None else "") + ", last stage")
    # the headline numbers are the last evaluated stage's; the table below has every stage's
    for label, path in last_stage(inputs.fid, inputs.stages):
        score = read_json(path, "fid.json")
        items[esc(score.get("metric", "FID"))] = f"{fmt(score.get('value'), '.2f')} ({esc(label)})"
    for label, path in last_stage(inputs.clip, inputs.stages):
        items["CLIP score"] = f"{fmt(read_json(path, 'clip.json').get('value'), '.2f')} ({esc(label)})"
    for label, path in last_stage(inputs.geneval, inputs.stages):
        items["GenEval overall"] = f"{geneval_overall(read_geneval(path))} ({esc(label)})"
    for label, path in last_stage(inputs.shapes, inputs.stages):
        score = read_json(path, "score-shapes summary")
        items["drawn shapes, all right"] = f"{fmt(100 * score.get('correct_images'), '.1f')} % ({esc(label)} samples)"
    if stats:
        gpu_hours = sum(float(s.get("gpu_count", 0)) * float(s.get("wall_time_s", 0)) / 3600 for s in stats.values())
        wall_minutes = sum(float(s.get("wall_time_s", 0)) for s in stats.values()) / 60
        items["cost"] = (f"{gpu_hours:,.1f} GPU-hours, ${gpu_hours * inputs.price_per_gpu_hour:,.2f}" if gpu_hours
                         else f"a CPU run, {wall_minutes:.1f} minutes of training")
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in items.items())
    return f'<div class="summary"><dl>{rows}</dl></div>'


def build_report(inputs: ReportInputs) -> str:
    frames = stage_metrics(inputs)
    body = "".join([summary_box(inputs, frames), training_section(inputs, frames),
                    samples_section(inputs.stages, inputs.grids, inputs.sample_prompts), evaluation_section(inputs),
                    ledger_section(inputs), provenance_section(inputs)])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(inputs.title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{esc(inputs.title)}</h1>"
            f'<p class="note">A run of the MicroDiT recipe (arXiv 2407.15811) rebuilt by microdit.</p>'
            f"{body}</body></html>\n")


def write_report(inputs: ReportInputs, out: str | os.PathLike) -> None:
    unknown = {name: sorted(set(paths) - set(inputs.stages)) for name, paths in
               (("metrics", inputs.metrics), ("train-stats", inputs.train_stats), ("grid", inputs.grids),
                ("stage-config", inputs.stage_configs), ("eval-samples", inputs.eval_samples),
                ("shapes", inputs.shapes), ("shapes-floor", inputs.shapes_floor))}
    unknown = {k: v for k, v in unknown.items() if v}
    if unknown:
        raise UserError(f"inputs for stages not in --stages {inputs.stages}: {json.dumps(unknown)}")
    text = build_report(inputs)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
