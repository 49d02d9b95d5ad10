"""`microdit bench table`: a run's JSON lines as the markdown tables of docs/benchmarks.md.

A GPU session ends minutes after its measurements; copying numbers by hand into the docs is where they go wrong.
Ratios are to the authors' numbers of issue #7, measured on an H200 with their code: on another card they compare
unlike with like, which the table says in its header.
"""
from microdit.files import read_jsonl

# The authors' img/s per GPU on one H200 (issue #7): training (eager, compiled or None) and sampling per resolution.
AUTHORS_TRAIN = {1: (751.0, 1229.0), 2: (276.0, 450.0), 3: (170.0, None), 4: (65.7, None)}
AUTHORS_SAMPLE = {256: 7.41, 512: 1.75}


def read_records(paths) -> list[dict]:
    return [record for path in paths for record in read_jsonl(path, "bench output")]


def _number(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _switches(r: dict) -> str:
    parts = ["eager" if r.get("compile", "none") == "none" else r["compile"], r.get("moe_dispatch")]
    parts += ["bf16 norms"] if r.get("low_precision_norm") else []
    parts += [f"ckpt {r['checkpoint_blocks']}"] if r.get("checkpoint_blocks") else []
    parts += [f"budget {r['activation_budget']}"] if r.get("activation_budget", 1.0) < 1.0 else []
    parts += [f"attention {r['attention_backend']}"] if r.get("attention_backend", "default") != "default" else []
    return ", ".join(p for p in parts if p)


def _training_row(r: dict) -> str:
    eager, compiled = AUTHORS_TRAIN[r["stage"]]
    best = compiled or eager
    hits = f"{r['compile_cache_hits']}/{r['compile_cache_hits'] + r['compile_cache_misses']}" \
        if "compile_cache_hits" in r else ""
    mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f} %"
    return (f"| {r.get('label', '')} | {r['stage']} | {r['microbatch']} | {_switches(r)} | {_number(r['img_per_s'])} "
            f"| {r['img_per_s'] / best:.2f} | {_number(r.get('peak_mem_gib'), 2)} | {mfu} "
            f"| {_number(r.get('first_step_s'))} | {hits} |")


def _sampling_row(r: dict) -> str:
    theirs = AUTHORS_SAMPLE.get(r["resolution"])
    ratio = f"{r['img_per_s'] / theirs:.2f}" if theirs else ""
    return (f"| {r.get('label', '')} | {r['resolution']} | {r['batch']} | {_switches(r)} "
            f"| {_number(r['img_per_s'], 2)} | {ratio} | {_number(r.get('peak_mem_gib'), 2)} "
            f"| {_number(r.get('warmup_s'))} |")


def _layer_row(r: dict) -> str:
    variant = r.get("backend") or f"{r['dispatch']}{', compiled' if r.get('compiled') else ''}"
    failed = sum("error" in s for s in r["shapes"])
    note = f"{failed} of {len(r['shapes'])} shapes failed" if failed else ""
    return (f"| {r['stage']} | {r['microbatch']} | {r['layer']} | {variant} | {_number(r['ms_per_step'], 2)} "
            f"| {_number(r.get('tflop_per_s'))} | {note} |")


def markdown_tables(records: list[dict]) -> str:
    """Training, sampling and layer tables, then what failed or was skipped, in the order of the records."""
    devices = sorted({r["device"] for r in records if "device" in r})
    sections = [f"Device: {', '.join(devices) or 'unknown'}; torch "
                f"{', '.join(sorted({r['torch'] for r in records if 'torch' in r}))}. Ratios: to the authors' best "
                f"number on an H200 (compiled where they measured it, else eager)."]
    groups = (
        ("| label | stage | microbatch | switches | img/s | ratio | peak GiB | MFU | first step s | cache hits |",
         lambda r: "img_per_s" in r and "stage" in r, _training_row),
        ("| label | resolution | batch | switches | img/s | ratio | peak GiB | warm-up s |",
         lambda r: "img_per_s" in r and "resolution" in r, _sampling_row),
        ("| stage | microbatch | layer | variant | ms per step | TFLOP/s | note |",
         lambda r: "layer" in r and "ms_per_step" in r, _layer_row),
    )
    for header, wanted, row in groups:
        rows = [row(r) for r in records if wanted(r)]
        if rows:
            separator = "|" + "---|" * (header.count("|") - 1)
            sections.append("\n".join([header, separator, *rows]))
    missing = [f"- {r.get('label', '?')}: {r.get('error') or r.get('skipped')}" for r in records
               if "error" in r or "skipped" in r]
    if missing:
        sections.append("Not measured:\n" + "\n".join(missing))
    return "\n\n".join(sections) + "\n"
