"""The report's HTML pieces: escaping, number formats, inlined images, tables, the page's style."""
import base64
import html
import os
from pathlib import Path

from microdit.errors import UserError

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
.scroll { overflow-x: auto; max-width: 100%; }
table.wide { table-layout: fixed; width: 100%; } table.wide td { overflow-wrap: anywhere; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; overflow-wrap: break-word; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
tr.total td { font-weight: bold; background: #fafafa; }
.side { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; } .side > * { min-width: 0; }
.missing { color: #888; font-style: italic; } .note { color: #555; font-size: 0.9em; }
.summary { background: #f6f8fa; border: 1px solid #d8dee4; border-radius: 6px; padding: 0.6em 1.2em; }
.summary dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.25em 1.2em; margin: 0.4em 0; }
.summary dt { font-weight: bold; } .summary dd { margin: 0; overflow-wrap: anywhere; }
img { max-width: 100%; } figure { margin: 0.5em 0 1.5em; } figcaption { font-weight: bold; margin-bottom: 0.3em; }
.cells { display: flex; flex-wrap: wrap; gap: 0.8em; }
.cell { margin: 0; text-align: center; font-size: 0.85em; color: #555; }
.cell img { width: 256px; height: 256px; image-rendering: pixelated; display: block; border: 1px solid #ddd; }
"""


def esc(value) -> str:
    return html.escape(str(value))


def fmt(value, spec: str = ".3f", missing: str = "—") -> str:
    return missing if value is None or value != value else format(value, spec)  # value != value: NaN


def png_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def table(header: list[str], rows: list[list[str]], total: list[str] | None = None, wide: bool = False) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if total:
        body += '<tr class="total">' + "".join(f"<td>{c}</td>" for c in total) + "</tr>"
    # words wrap whole; a table still wider than the page scrolls in its own box, not the page
    return (f'<div class="scroll"><table{" class=wide" if wide else ""}><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} ({err.strerror or err})") from None


def shown_path(value):
    """An absolute path inside the working directory as a relative one, so the page reads the same on any checkout;
    lists are shown item by item, anything else as it is."""
    if isinstance(value, list):
        return [shown_path(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        relative = os.path.relpath(value)
        return value if relative.startswith("..") else relative
    return value
