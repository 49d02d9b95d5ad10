"""The synthetic source: same seed -> same bytes, and every caption describes its image."""
import io
import json
import re

from PIL import Image

from data_helpers import run
from microdit.data.shards import list_shards, read_shard
from microdit.data.synthetic import COLORS, COUNT_WORDS

WORD_COUNTS = {word: n for n, word in COUNT_WORDS.items()}
CAPTION = re.compile(r"(a|two|three) (\w+) (circle|square|triangle)s? (left of|right of|above|below) "
                     r"(a|two|three) (\w+) (circle|square|triangle)s? on a (\w+) background")


def download(out, seed=0, num=60):
    assert run(["download", "synthetic", "--out", str(out), "--num-samples", str(num), "--shard-size", "25",
                "--seed", str(seed), "--min-size", "64", "--max-size", "128"]) == 0
    return out


def tar_bytes(out):
    return [t.read_bytes() for t in list_shards(out)]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first, second = download(tmp_path / "a"), download(tmp_path / "b")
    assert [t.name for t in list_shards(first)] == ["00000.tar", "00001.tar", "00002.tar"]
    assert tar_bytes(first) == tar_bytes(second)
    assert tar_bytes(download(tmp_path / "c", seed=1)) != tar_bytes(first)


def test_img2dataset_layout_and_stats(tmp_path):
    out = download(tmp_path / "s")
    stats = json.loads((out / "00002_stats.json").read_text())
    assert stats["successes"] == stats["count"] == 10
    key, files = next(read_shard(out / "00000.tar"))
    assert key == "000000000" and set(files) == {"jpg", "txt", "json"}


def nearest_color(rgb) -> str:
    return min(COLORS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLORS[name], rgb)))


def test_captions_agree_with_images(tmp_path):
    out = download(tmp_path / "s", num=40)
    for tar in list_shards(out):
        for _, files in read_shard(tar):
            caption, meta = files["txt"].decode(), json.loads(files["json"])
            image = Image.open(io.BytesIO(files["jpg"])).convert("RGB")
            match = CAPTION.fullmatch(caption)
            assert match, caption
            count_a, color_a, shape_a, relation, count_b, color_b, shape_b, background = match.groups()
            assert background == meta["background"] and relation == meta["relation"]
            groups = {"a": [o for o in meta["objects"] if o["group"] == "a"],
                      "b": [o for o in meta["objects"] if o["group"] == "b"]}
            for name, count, color, shape in (("a", count_a, color_a, shape_a), ("b", count_b, color_b, shape_b)):
                assert len(groups[name]) == WORD_COUNTS[count]
                for obj in groups[name]:
                    x0, y0, x1, y1 = obj["bbox"]
                    # a point inside every shape: the center, lowered to the triangle's centroid
                    point = ((x0 + x1) // 2, (y0 + 2 * y1) // 3 if shape == "triangle" else (y0 + y1) // 2)
                    assert obj["shape"] == shape and nearest_color(image.getpixel(point)) == color
            axis, later = {"left of": (0, "b"), "right of": (0, "a"), "above": (1, "b"), "below": (1, "a")}[relation]
            earlier = "a" if later == "b" else "b"
            assert max(o["bbox"][axis + 2] for o in groups[earlier]) < min(o["bbox"][axis] for o in groups[later])
