"""The sample grids as one row per prompt: each stage's image for that prompt, shown at least 256 px wide and
upscaled nearest-neighbour, so a 32 px sample is readable and its pixels are not smoothed into something it is not."""
import io
import math

from PIL import Image

from microdit.report.html import esc, png_tag, read_bytes

PADDING = 2  # microdit.sampling.save_image_grid's padding between and around images


def grid_cells(data: bytes, count: int) -> list[bytes] | None:
    """The `count` images of a grid that save_image_grid wrote (ceil(sqrt(count)) per row), as PNG bytes each;
    None when the grid's size does not fit `count` images of one size (then the grid is shown whole)."""
    with Image.open(io.BytesIO(data)) as grid:
        grid = grid.convert("RGB")
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    width, rem_w = divmod(grid.width - PADDING, columns)
    height, rem_h = divmod(grid.height - PADDING, rows)
    if rem_w or rem_h or width <= PADDING or height <= PADDING:
        return None
    cells = []
    for index in range(count):
        row, column = divmod(index, columns)
        left, top = column * width + PADDING, row * height + PADDING
        buffer = io.BytesIO()
        grid.crop((left, top, left + width - PADDING, top + height - PADDING)).save(buffer, format="PNG")
        cells.append(buffer.getvalue())
    return cells


def cell(data: bytes, label: str) -> str:
    return f'<figure class="cell">{png_tag(data, label)}<figcaption>{esc(label)}</figcaption></figure>'


def samples_section(stages: list[str], grids: dict, prompts: list[str]) -> str:
    """A figure per prompt holding each stage's image of it; grids that cannot be cut are shown whole."""
    cut, whole = {}, {}
    for stage in stages:
        if stage in grids:
            data = read_bytes(grids[stage], "sample grid")
            cells = grid_cells(data, len(prompts)) if prompts else None
            if cells:
                cut[stage] = cells
            else:
                whole[stage] = data
    body = ""
    for index, prompt in enumerate(prompts if cut else []):
        images = "".join(cell(cut[stage][index], stage) for stage in stages if stage in cut)
        body += f'<figure><figcaption>“{esc(prompt)}”</figcaption><div class="cells">{images}</div></figure>'
    for stage, data in whole.items():
        body += f"<figure><figcaption>{esc(stage)}</figcaption>{png_tag(data, f'{stage} samples')}</figure>"
    missing = [stage for stage in stages if stage not in grids]
    if missing:
        body += f'<p class="missing">no samples from {esc(", ".join(missing))}</p>'
    if cut:
        note = ('<p class="note">Each stage\'s final weights, one fixed noise per prompt, shown nearest-neighbour '
                "upscaled.</p>")
    else:  # a grid shown whole holds the prompts left to right, row by row
        note = "<ol>" + "".join(f"<li>{esc(p)}</li>" for p in prompts) + "</ol>" if prompts else ""
    return "<h2>Samples (fixed prompts)</h2>" + note + body
