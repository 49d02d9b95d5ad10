"""report.html: per-stage loss and learning-rate curves, sample grids with their prompts, FID / GenEval next to the
paper's numbers, the cost ledger and the provenance of it all, in one self-contained page (images inlined as base64) built only from declared inputs.

Optional inputs may be absent (a stage without a grid shows "no samples"); an input that is named but unreadable is
an error, so a broken upstream step is not silently hidden.
"""
import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from microdit.errors import UserError
from microdit.eval.geneval import TASKS
from microdit.files import atomic_write, read_json
from microdit.report.ledger import PAPER_PRICE_PER_GPU_HOUR, PAPER_TOTAL_DOLLARS, ledger_row, totals

# The README's scores for the four released checkpoints, in its order (SPEC §3.8).
PAPER_MODELS = (
    ("dit_4_channel_22M_real_only_data", 12.72, 0.46),
    ("dit_4_channel_37M_real_and_synthetic_data", 12.66, 0.46),
    ("dit_16_channel_37M_real_and_synthetic_data", 13.04, 0.40),
    ("dit_4_channel_0.5B_synthetic_data", 13.26, 0.52),
)

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
tr.total td { font-weight: bold; background: #fafafa; }
.side { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
.missing { color: #888; font-style: italic; } .note { color: #555; font-size: 0.9em; }
img { max-width: 100%; } figure { margin: 0.5em 0 1.5em; } figcaption { font-weight: bold; margin-bottom: 0.3em; }
"""


@dataclass
class ReportInputs:
    title: str
    stages: list[str]
    metrics: dict[str, Path] = field(default_factory=dict)      # stage -> metrics JSONL
    train_stats: dict[str, Path] = field(default_factory=dict)  # stage -> train_stats.json
    grids: dict[str, Path] = field(default_factory=dict)        # stage -> sample grid PNG
    fid: dict[str, Path] = field(default_factory=dict)          # label -> fid.json
    geneval: dict[str, Path] = field(default_factory=dict)      # label -> geneval.json
    stage_configs: dict[str, Path] = field(default_factory=dict)  # stage -> its resolved stage.yaml
    sample_prompts: list[str] = field(default_factory=list)     # the grids' prompts, in grid order
    price_per_gpu_hour: float = PAPER_PRICE_PER_GPU_HOUR


def esc(value) -> str:
    return html.escape(str(value))


def fmt(value, spec: str = ".3f", missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def png_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def table(header: list[str], rows: list[list[str]], total: list[str] | None = None) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if total:
        body += '<tr class="total">' + "".join(f"<td>{c}</td>" for c in total) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} ({err.strerror or err})") from None


def curves_section(inputs: ReportInputs) -> str:
    from microdit.report.plots import loss_lr_figure, read_metrics

    parts = []
    for stage in inputs.stages:
        if stage not in inputs.metrics:
            parts.append(f'<figure><figcaption>{esc(stage)}</figcaption><p class="missing">no metrics</p></figure>')
            continue
        df = read_metrics(inputs.metrics[stage])
        body = (png_tag(loss_lr_figure(df, stage), f"{stage} loss and learning rate") if len(df)
                else '<p class="missing">no training lines</p>')
        held_out = df.dropna(subset=["val_loss"]) if "val_loss" in df else df.iloc[:0]
        if len(held_out):
            last = held_out.iloc[-1]
            ema = last.get("val_loss_ema")
            ema_text = f", EMA weights {fmt(ema, '.4f')}" if ema is not None and ema == ema else ""  # NaN: none
            body += (f"<p>held-out loss {fmt(last['val_loss'], '.4f')}{ema_text} at step {int(last['step'])} "
                     f"({len(held_out)} evaluations; unmasked, each sample at a fixed noise level)</p>")
        parts.append(f"<figure><figcaption>{esc(stage)}</figcaption>{body}</figure>")
    return "<h2>Training curves</h2>" + "".join(parts)


def samples_section(inputs: ReportInputs) -> str:
    parts = []
    for stage in inputs.stages:
        body = (png_tag(read_bytes(inputs.grids[stage], "sample grid"), f"{stage} samples")
                if stage in inputs.grids else '<p class="missing">no samples</p>')
        parts.append(f"<figure><figcaption>{esc(stage)}</figcaption>{body}</figure>")
    prompts = ""
    if inputs.sample_prompts:
        prompts = ('<p class="note">Each grid holds these prompts, left to right and row by row, each image from '
                   "its own fixed noise:</p><ol>" + "".join(f"<li>{esc(p)}</li>" for p in inputs.sample_prompts)
                   + "</ol>")
    return "<h2>Samples (fixed prompts)</h2>" + prompts + "".join(parts)


def evaluation_rows(inputs: ReportInputs) -> tuple[list[list[str]], dict[str, dict]]:
    fids = {label: read_json(path, "fid.json") for label, path in inputs.fid.items()}
    genevals = {label: read_geneval(path) for label, path in inputs.geneval.items()}
    rows = []
    for label in list(dict.fromkeys([*fids, *genevals])):
        f, g = fids.get(label, {}), genevals.get(label, {})
        rows.append([esc(label), esc(f.get("metric", "—")), fmt(f.get("value"), ".2f"), esc(f.get("num_images", "—")),
                     esc(f.get("resolution", "—")), esc(f.get("steps", "—")), esc(f.get("guidance", "—")),
                     geneval_overall(g) if g else "—"])
    return rows, genevals


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
    rows, genevals = evaluation_rows(inputs)
    ours = (table(["model", "metric", "value", "images", "px", "steps", "guidance", "GenEval"], rows) if rows
            else '<p class="missing">no evaluation results</p>')
    paper = table(["released model", "FID (COCO 30K)", "GenEval"],
                  [[esc(name), f"{fid:.2f}", f"{gen:.2f}"] for name, fid, gen in PAPER_MODELS])
    section = (f'<h2>Evaluation</h2><div class="side"><div><h3>This run</h3>{ours}</div>'
               f"<div><h3>Paper (README of the released models)</h3>{paper}</div></div>"
               '<p class="note">Only Inception scores from clean-fid are FIDs. The tiny preset reports a Fréchet '
               "distance in EfficientNet-Lite0 feature space, which is not comparable with FID.</p>")
    if genevals:
        task_rows = [[esc(label)] + [fmt(g.get("tasks", {}).get(t, {}).get("accuracy"), ".2f") for t in TASKS]
                     + [geneval_overall(g), fmt(100 * g["correct_images"], ".1f") + " %",
                        fmt(100 * g["correct_prompts"], ".1f") + " %"] for label, g in genevals.items()]
        section += "<h3>GenEval by task</h3>" + table(
            ["model", *TASKS, "overall", "correct images", "correct prompts"], task_rows)
    return section


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
    rows = [[esc(r.stage), str(r.gpus), f"{r.wall_hours:.2f}", f"{r.gpu_hours:.2f}", f"{r.steps:,}",
             f"{r.images_seen:,}", f"{r.img_per_s:,.1f}", fmt(None if r.mfu is None else 100 * r.mfu, ".1f") + " %",
             fmt(r.final_loss, ".4f"), f"${r.dollars:,.2f}"] for r in ledger]
    t = totals(ledger)
    total = ["total", "", f"{t['wall_hours']:.2f}", f"{t['gpu_hours']:.2f}", f"{t['steps']:,}",
             f"{t['images_seen']:,}", "", "", "", f"${t['dollars']:,.2f}"]
    header = ["stage", "GPUs", "wall hours", "GPU-hours", "steps", "images seen", "img/s", "MFU", "final loss",
              f"$ at ${price:.2f}/GPU-h"]
    paper_hours = PAPER_TOTAL_DOLLARS / PAPER_PRICE_PER_GPU_HOUR
    return ("<h2>Cost ledger</h2>" + table(header, rows, total) + plan_table(inputs) +
            f'<p class="note">Paper: {paper_hours:,.0f} H100-hours × ${PAPER_PRICE_PER_GPU_HOUR:.2f} = '
            f"${PAPER_TOTAL_DOLLARS:,.0f} for all four stages.</p>")


def plan_table(inputs: ReportInputs) -> str:
    """What `microdit plan` predicts for each stage as it ran (its stage.yaml, the GPU model its provenance names,
    the FLOPs per image its trainer counted), beside what it spent; only stages whose resolved config is given."""
    from microdit.plan import plan_of_run

    rows = []
    for stage in inputs.stages:
        if stage in inputs.train_stats and stage in inputs.stage_configs:
            stats = read_json(inputs.train_stats[stage], "train_stats.json")
            planned = plan_of_run(stage, inputs.stage_configs[stage], stats, inputs.price_per_gpu_hour)
            spent = ledger_row(stage, stats, inputs.price_per_gpu_hour)
            if planned is not None and planned.gpu_hours is not None:
                rows.append([esc(stage), esc(planned.gpu), f"{planned.gpu_hours:.2f}", f"{spent.gpu_hours:.2f}",
                             f"${planned.dollars:,.2f}", f"${spent.dollars:,.2f}",
                             f"{spent.gpu_hours / planned.gpu_hours:.2f}"])
    if not rows:
        return ""
    return ("<h3>Planned and spent</h3>" +
            table(["stage", "planned on", "planned GPU-hours", "spent GPU-hours", "planned $", "spent $",
                   "spent / planned"], rows) +
            '<p class="note">Planned: <code>microdit plan</code> from the throughput measured in '
            "docs/benchmarks.md, for the stage's settings as it ran.</p>")


def provenance_section(inputs: ReportInputs) -> str:
    """The settings behind the numbers above: each stage's config (the key fields; the file's hash stands for the
    rest), each score's generation settings, and the code that wrote this page."""
    from microdit.report.provenance import code_version, score_settings, stage_settings

    section = "<h2>Provenance</h2>"
    stages = {stage: stage_settings(inputs.stage_configs[stage]) for stage in inputs.stages
              if stage in inputs.stage_configs}
    if stages:
        names = list(dict.fromkeys(name for settings in stages.values() for name in settings))
        rows = [[esc(name)] + [esc(settings.get(name, "—")) for settings in stages.values()] for name in names]
        section += "<h3>Stage configs</h3>" + table(["setting", *map(esc, stages)], rows)
    scores = {f"the Fréchet distance of {label}": score_settings(read_json(path, "fid.json"))
              for label, path in inputs.fid.items()}
    scores.update({f"GenEval of {label}": score_settings(read_json(path, "geneval.json").get("generation", {}))
                   for label, path in inputs.geneval.items()})
    for name, settings in scores.items():
        section += (f"<h3>How {esc(name)} was made</h3>"
                    + table(["setting", "value"], [[esc(k), esc(v)] for k, v in settings.items()]))
    return section + f'<p class="note">Written by {esc(code_version())}.</p>'


def build_report(inputs: ReportInputs) -> str:
    body = "".join([curves_section(inputs), samples_section(inputs), evaluation_section(inputs),
                    ledger_section(inputs), provenance_section(inputs)])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(inputs.title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{esc(inputs.title)}</h1>"
            f'<p class="note">MicroDiT (arXiv 2407.15811) rebuild; stages: {esc(", ".join(inputs.stages))}.</p>'
            f"{body}</body></html>\n")


def write_report(inputs: ReportInputs, out: str | os.PathLike) -> None:
    unknown = {name: sorted(set(paths) - set(inputs.stages)) for name, paths in
               (("metrics", inputs.metrics), ("train-stats", inputs.train_stats), ("grid", inputs.grids),
                ("stage-config", inputs.stage_configs))}
    unknown = {k: v for k, v in unknown.items() if v}
    if unknown:
        raise UserError(f"inputs for stages not in --stages {inputs.stages}: {json.dumps(unknown)}")
    text = build_report(inputs)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
