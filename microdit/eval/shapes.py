"""A GenEval of the drawn shapes (microdit/data/synthetic.py): exact, offline checks that an image shows what its
caption says, on the caption's own vocabulary (known palette, three shapes, counts 1-3, four relations).

Detection: images under SCORED_SIDE are first upscaled to it (Lanczos), the size the thresholds below are set
for. The background is the background colour most pixels are nearest to, measured as it appears (its median
pixel), so that a slightly off background does not make the whole image foreground; foreground is every pixel
farther than FOREGROUND_DISTANCE from it. Foreground is eroded by one pixel (it splits shapes that blur or JPEG
joined) and cut into connected components; components under MIN_AREA of the image are noise. A component's colour
is the palette colour nearest to its median pixel (its core outweighs its blurred rim); its shape is the point-up
triangle when its bottom half clearly outweighs its top half, else the square or the inscribed ellipse of its
bounding box, whichever its mask overlaps more.

Judgement per image, in GenEval's categories:
  background  the detected background is the caption's;
  color       each group's colour is on some object (whatever its shape);
  shape       each group's shape is on some object (whatever its colour);
  count       each group's objects (its colour and its shape) number exactly its count;
  position    both groups are found and group A's centre lies on the relation's side of group B's centre.
A category is right for an image when it is right for both groups; per group accuracies are reported as well.
"""
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from microdit.data.synthetic import BACKGROUNDS, COLORS, COUNT_WORDS, RELATIONS, SHAPES, Group

CATEGORIES = ("background", "color", "shape", "count", "position")
GROUP_CATEGORIES = ("color", "shape", "count")
FOREGROUND_DISTANCE = 35.0  # RGB distance; the closest object/background pair of the palette (purple/gray) is 91
MAX_ELONGATION = 1.4  # bounding box long/short side over which a component is taken for shapes that touch
TRIANGLE_LEAN = 0.25  # (bottom half - top half) / area over which a mask is a triangle: 0.5 sharp, 0 the others
MIN_FIT = 0.75  # template overlap under which a component is taken for shapes that touch at a corner
MAX_EROSION = 4  # pixels eroded at most to separate them
MIN_AREA = 0.003  # of the image: about 12 px at 64x64; the smallest drawn shape there covers about 40 px eroded
SCORED_SIDE = 64  # at 32 px one eroded pixel takes a third of a small triangle: counts read 66 % of the references

_WORD_COUNTS = {word: count for count, word in COUNT_WORDS.items()}
_GROUP = rf"({'|'.join(_WORD_COUNTS)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})s?"
_CAPTION = re.compile(rf"{_GROUP} ({'|'.join(RELATIONS)}) {_GROUP} on a ({'|'.join(BACKGROUNDS)}) background")


@dataclass(frozen=True)
class Scene:
    a: Group
    relation: str
    b: Group
    background: str


@dataclass(frozen=True)
class DetectedObject:
    color: str
    shape: str
    center: tuple[float, float]  # (x, y) in pixels
    area: int


def parse_caption(caption: str) -> Scene | None:
    """The scene a `caption_of` caption describes, or None for any other text."""
    match = _CAPTION.fullmatch(caption.strip())
    if match is None:
        return None
    count_a, color_a, shape_a, relation, count_b, color_b, shape_b, background = match.groups()
    return Scene(Group(_WORD_COUNTS[count_a], color_a, shape_a), relation,
                 Group(_WORD_COUNTS[count_b], color_b, shape_b), background)


def _nearest(pixels: np.ndarray, palette: dict[str, tuple]) -> tuple[list[str], np.ndarray]:
    """(palette names, index of the nearest palette colour of each pixel)."""
    names = list(palette)
    colors = np.array([palette[n] for n in names], dtype=np.float32)
    distances = np.linalg.norm(pixels[..., None, :] - colors, axis=-1)
    return names, distances.argmin(-1)


def _shape_of(mask: np.ndarray) -> tuple[str, float]:
    """(shape, intersection over union with that shape's template) of a mask cropped to its bounding box. A mask
    whose bottom half holds clearly more than its top half is the point-up triangle (3:1 when sharp), whatever blur
    did to its corners; the others are the square or the circle, whichever template they overlap more."""
    height, width = mask.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    u, v = x / width, y / height  # pixel centres in the unit box
    templates = {
        "square": np.ones_like(mask),
        "circle": (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25,
        "triangle": np.abs(u - 0.5) <= v / 2,  # apex at the top centre, base along the bottom
    }
    iou = {name: float((mask & t).sum() / (mask | t).sum()) for name, t in templates.items()}
    bottom = mask[height // 2:].sum() - mask[:(height + 1) // 2].sum()
    if bottom > TRIANGLE_LEAN * mask.sum():
        return "triangle", iou["triangle"]
    best = max(("square", "circle"), key=iou.get)
    return best, iou[best]


def _separate(mask: np.ndarray) -> list[np.ndarray]:
    """Whole-image masks of the shapes in one component: a component no template fits well is shapes that touch
    at a corner or an edge; eroded until it falls apart, each of its pixels goes to the nearest remaining core."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    if _shape_of(mask[box])[1] >= MIN_FIT:
        return [mask]
    core = mask
    for _ in range(MAX_EROSION):
        core = ndimage.binary_erosion(core)
        seeds, count = ndimage.label(core, structure=np.ones((3, 3)))
        if count >= 2:
            nearest = ndimage.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
            owner = seeds[tuple(nearest)]
            return [mask & (owner == i) for i in range(1, count + 1)]
        if count == 0:
            break
    return [mask]


def _split(mask: np.ndarray, origin: tuple[int, int]) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """(mask, (top, left)) of each shape in a component: every drawn shape has a square bounding box, so an
    elongated component is shapes that touch; it is cut where it is narrowest, away from its ends, recursively."""
    height, width = mask.shape
    long_axis = 0 if height >= width else 1
    long, short = max(height, width), min(height, width)
    margin = max(1, short // 2)
    if long < MAX_ELONGATION * short or long <= 2 * margin:
        return [(mask, origin)]
    profile = mask.sum(axis=1 - long_axis)
    cut = margin + int(profile[margin:long - margin].argmin())
    parts = []
    for start, stop in ((0, cut), (cut, long)):
        part = mask[start:stop] if long_axis == 0 else mask[:, start:stop]
        rows, cols = np.nonzero(part.any(axis=1))[0], np.nonzero(part.any(axis=0))[0]
        if len(rows):
            top = origin[0] + (start if long_axis == 0 else 0) + rows[0]
            left = origin[1] + (start if long_axis == 1 else 0) + cols[0]
            parts += _split(part[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], (top, left))
    return parts


def detect(image: np.ndarray) -> tuple[str, list[DetectedObject]]:
    """(background name, objects) of an HxWx3 uint8 image; centres and areas in its own pixels."""
    scale = max(1.0, SCORED_SIDE / min(image.shape[:2]))
    if scale > 1:
        height, width = image.shape[:2]
        image = np.asarray(Image.fromarray(image).resize((round(width * scale), round(height * scale)),
                                                         Image.LANCZOS))
    pixels = image.astype(np.float32)
    names, nearest = _nearest(pixels, BACKGROUNDS)
    background = int(np.bincount(nearest.ravel(), minlength=len(names)).argmax())
    seen_background = np.median(pixels[nearest == background], axis=0)
    foreground = np.linalg.norm(pixels - seen_background, axis=-1) > FOREGROUND_DISTANCE
    labels, count = ndimage.label(ndimage.binary_erosion(foreground), structure=np.ones((3, 3)))
    min_area = MIN_AREA * labels.size
    objects = []
    pieces = [piece for index in range(1, count + 1) for piece in _separate(labels == index)]
    parts = []
    for piece in pieces:
        box = ndimage.find_objects(piece.astype(np.uint8))[0]
        parts += _split(piece[box], (box[0].start, box[1].start))
    for mask, (top, left) in parts:
        area = int(mask.sum())
        if area < min_area:
            continue
        height, width = mask.shape
        color_names, color = _nearest(np.median(pixels[top:top + height, left:left + width][mask], axis=0), COLORS)
        ys, xs = np.nonzero(mask)
        center = (float(xs.mean() + left) / scale, float(ys.mean() + top) / scale)
        objects.append(DetectedObject(color_names[int(color)], _shape_of(mask)[0], center, round(area / scale ** 2)))
    return names[background], objects


def _relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    dx, dy = a[0] - b[0], a[1] - b[1]  # image y grows downwards
    return {"left of": dx < 0, "right of": dx > 0, "above": dy < 0, "below": dy > 0}[relation]


def _center(objects: list[DetectedObject]) -> tuple[float, float]:
    return (sum(o.center[0] for o in objects) / len(objects), sum(o.center[1] for o in objects) / len(objects))


def judge(scene: Scene, background: str, objects: list[DetectedObject]) -> dict:
    """{category: bool} for the image and {"a"|"b": {category: bool}} per group."""
    groups, found = {}, {}
    for name, group in (("a", scene.a), ("b", scene.b)):
        found[name] = [o for o in objects if (o.color, o.shape) == (group.color, group.shape)]
        groups[name] = {"color": any(o.color == group.color for o in objects),
                        "shape": any(o.shape == group.shape for o in objects),
                        "count": len(found[name]) == group.count}
    position = bool(found["a"] and found["b"]) and _relation_holds(scene.relation, _center(found["a"]),
                                                                   _center(found["b"]))
    categories = {"background": background == scene.background, "position": position}
    categories.update({c: groups["a"][c] and groups["b"][c] for c in GROUP_CATEGORIES})
    return {"categories": {c: categories[c] for c in CATEGORIES}, "groups": groups}


def score_image(caption: str, image: np.ndarray) -> dict | None:
    """One image's judgement and what was detected, or None when the caption is not a drawn-shapes caption."""
    scene = parse_caption(caption)
    if scene is None:
        return None
    background, objects = detect(image)
    verdict = judge(scene, background, objects)
    return {"caption": caption, **verdict, "correct": all(verdict["categories"].values()),
            "detected": {"background": background,
                         "objects": [{"color": o.color, "shape": o.shape, "center": [round(c, 1) for c in o.center],
                                      "area": o.area} for o in objects]}}


def _accuracy(flags: list[bool]) -> dict:
    return {"accuracy": sum(flags) / len(flags), "correct": int(sum(flags)), "images": len(flags)}


def summarize(rows: list[dict], results_file: str | None = None) -> dict:
    """The summary of scored images, in the keys of GenEval's summary (microdit.eval.geneval.summarize), so one
    table renders either; `groups` adds the accuracy of group A's and group B's attributes on their own."""
    tasks = {c: _accuracy([r["categories"][c] for r in rows]) for c in CATEGORIES}
    overall = sum(t["accuracy"] for t in tasks.values()) / len(tasks)
    by_caption: dict[str, bool] = {}
    for row in rows:
        by_caption[row["caption"]] = by_caption.get(row["caption"], False) or row["correct"]
    return {
        "overall": overall,
        "overall_of_present_tasks": overall,
        "tasks": tasks,
        "groups": {g: {c: _accuracy([r["groups"][g][c] for r in rows]) for c in GROUP_CATEGORIES} for g in "ab"},
        "missing_tasks": [],
        "num_images": len(rows),
        "num_prompts": len(by_caption),
        "correct_images": sum(r["correct"] for r in rows) / len(rows),
        "correct_prompts": sum(by_caption.values()) / len(by_caption),
        "results_file": results_file,
    }
