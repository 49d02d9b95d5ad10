"""Procedural images of colored shapes with compositional captions: an offline, deterministic training set.

Each image holds two groups of shapes ("two red circles left of a blue square"): group A in one half of the canvas,
group B in the other, so the relation in the caption is true by construction. Sample i of seed s depends on (s, i)
only, so any shard can be (re)generated alone and the same seed always gives the same bytes.
"""
import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS = {
    "red": (215, 35, 35), "green": (30, 160, 60), "blue": (35, 75, 215),
    "yellow": (240, 210, 30), "purple": (135, 50, 175), "orange": (245, 135, 20),
}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (128, 128, 128), "black": (15, 15, 15), "beige": (225, 210, 175)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Group:
    count: int
    color: str
    shape: str

    def phrase(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        return f"{COUNT_WORDS[self.count]} {self.color} {noun}"


def sample_scene(rng: random.Random) -> tuple[Group, str, Group, str]:
    """(group A, relation, group B, background); the two groups always differ in color or shape."""
    a = Group(rng.randint(1, 3), rng.choice(list(COLORS)), rng.choice(SHAPES))
    while True:
        b = Group(rng.randint(1, 3), rng.choice(list(COLORS)), rng.choice(SHAPES))
        if (b.color, b.shape) != (a.color, a.shape):
            break
    return a, rng.choice(RELATIONS), b, rng.choice(list(BACKGROUNDS))


def caption_of(a: Group, relation: str, b: Group, background: str) -> str:
    return f"{a.phrase()} {relation} {b.phrase()} on a {background} background"


def _halves(width: int, height: int, relation: str) -> tuple[tuple, tuple]:
    """(box of group A, box of group B) as (x0, y0, x1, y1), split along the relation's axis."""
    left, right = (0, 0, width // 2, height), (width // 2, 0, width, height)
    top, bottom = (0, 0, width, height // 2), (0, height // 2, width, height)
    pairs = {"left of": (left, right), "right of": (right, left), "above": (top, bottom), "below": (bottom, top)}
    return pairs[relation]


def _cells(box: tuple, count: int, along_x: bool) -> list[tuple]:
    """Split a half into `count` equal cells across the other axis, so shapes never overlap."""
    x0, y0, x1, y1 = box
    if along_x:
        step = (x1 - x0) / count
        return [(round(x0 + i * step), y0, round(x0 + (i + 1) * step), y1) for i in range(count)]
    step = (y1 - y0) / count
    return [(x0, round(y0 + i * step), x1, round(y0 + (i + 1) * step)) for i in range(count)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, bbox: tuple, color: tuple) -> None:
    x0, y0, x1, y1 = bbox
    if shape == "circle":
        draw.ellipse(bbox, fill=color)
    elif shape == "square":
        draw.rectangle(bbox, fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)


def _place(rng: random.Random, cell: tuple) -> tuple:
    """A square bbox inside the cell, 50-80% of its short side, at a random offset."""
    x0, y0, x1, y1 = cell
    side = max(4, int(min(x1 - x0, y1 - y0) * rng.uniform(0.5, 0.8)))
    left = x0 + rng.randint(0, max(0, (x1 - x0) - side))
    top = y0 + rng.randint(0, max(0, (y1 - y0) - side))
    return left, top, left + side - 1, top + side - 1


def render(index: int, seed: int, min_size: int = 64, max_size: int = 256) -> tuple[bytes, str, dict]:
    """(JPEG bytes, caption, metadata with every object's shape, color and bbox) of sample `index`."""
    rng = random.Random(f"{seed}:{index}")
    a, relation, b, background = sample_scene(rng)
    width, height = (rng.randrange(min_size, max_size + 1, 8) for _ in range(2))
    image = Image.new("RGB", (width, height), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    objects = []
    horizontal = relation in ("left of", "right of")
    for group, half in zip((a, b), _halves(width, height, relation)):
        for cell in _cells(half, group.count, along_x=not horizontal):
            bbox = _place(rng, cell)
            _draw_shape(draw, group.shape, bbox, COLORS[group.color])
            objects.append({"shape": group.shape, "color": group.color, "bbox": list(bbox),
                            "group": "a" if group is a else "b"})
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    caption = caption_of(a, relation, b, background)
    meta = {"caption": caption, "width": width, "height": height, "relation": relation, "background": background,
            "objects": objects}
    return buffer.getvalue(), caption, meta
