"""Convert: the SPEC §4.1 size rules on crafted sizes, bad samples counted, the MDS round trip, atomic output."""
import json
import struct
import zlib

import pytest
from PIL import ImageFile

from data_helpers import jpeg_bytes, make_tar, run, write_wds
from microdit.data import mds
from microdit.data.captions import clean_caption
from microdit.data.convert import Rules, convert, convert_sample
from microdit.data.shards import Sample, tar_path
from microdit.errors import UserError

SIZES = {"tiny": (100, 300), "edge": (256, 256), "mid": (300, 400), "big": (600, 800), "wide": (2000, 520)}


def crafted(tmp_path):
    samples = [Sample(key=k, image=jpeg_bytes(w, h), caption=f"photo {k}") for k, (w, h) in SIZES.items()]
    return write_wds(tmp_path / "wds", samples)


def read_all(mds_dir) -> dict[str, dict]:
    return {s["key"]: s for r in mds.shard_readers(mds_dir) for s in mds.iter_samples(r)}


def test_size_rules_on_crafted_sizes(tmp_path):
    stats = convert(crafted(tmp_path), tmp_path / "mds")
    samples = read_all(tmp_path / "mds")
    assert sorted(samples) == ["big", "edge", "mid", "wide"]
    sizes = {k: (int(s["width"]), int(s["height"])) for k, s in samples.items()}
    assert sizes == {"edge": (256, 256), "mid": (300, 400), "big": (512, 682), "wide": (1969, 512)}
    assert all(s["jpg"].size == sizes[k] for k, s in samples.items())  # width/height = the stored image's size
    assert stats["kept"] == 4 and stats["resized"] == 2 and stats["skipped"]["too_small"] == 1
    assert json.loads((tmp_path / "mds" / "convert_stats.json").read_text()) == json.loads(json.dumps(stats))


def test_min_res_512_split_and_no_resize_mode(tmp_path):
    wds = crafted(tmp_path)
    convert(wds, tmp_path / "m512", Rules(min_side=512))
    assert sorted(read_all(tmp_path / "m512")) == ["big", "wide"]
    convert(wds, tmp_path / "raw", Rules(min_side=0, resize_to=0))
    kept = read_all(tmp_path / "raw")
    assert {k: s["jpg"].size for k, s in kept.items()} == SIZES  # TextCaps/COCO: neither filtered nor resized


def test_bad_samples_are_counted_skips(tmp_path):
    good = jpeg_bytes(300, 300)
    samples = [Sample("ok", good, "fine"), Sample("truncated", good[: len(good) // 2], "x"),
               Sample("empty_file", b"", "x"), Sample("empty_caption", good, "   ")]
    write_wds(tmp_path / "wds", samples)
    stats = convert(tmp_path / "wds", tmp_path / "mds")
    assert stats["kept"] == 1 and stats["skipped"] == {"too_small": 0, "too_large": 0, "bad_image": 2, "no_image": 0,
                                                       "bad_caption": 1, "duplicate_key": 0}


def test_a_key_that_is_not_one_sample_is_a_counted_skip(tmp_path):
    # issue 29: two images under one key were merged (the jpg stored with the png's caption), and a key seen again
    # after another sample became a second sample with the same key
    image = jpeg_bytes(300, 300)
    (tmp_path / "wds").mkdir()
    make_tar(tmp_path / "wds" / "00000.tar", [
        ("dup.jpg", image), ("dup.txt", b"first"), ("dup.png", image), ("dup.txt", b"second"),
        ("again.jpg", image), ("again.txt", b"a"), ("ok.jpg", image), ("ok.txt", b"fine"),
        ("again.jpg", image), ("again.txt", b"b")])
    (tmp_path / "wds" / "00000_stats.json").write_text("{}")
    stats = convert(tmp_path / "wds", tmp_path / "mds")
    samples = read_all(tmp_path / "mds")
    assert sorted(samples) == ["again", "ok"] and samples["again"]["caption"] == "a"
    assert mds.count(tmp_path / "mds") == 2 and stats["kept"] == 2 and stats["skipped"]["duplicate_key"] == 3


def test_non_utf8_caption_is_skipped():
    record, reason = convert_sample("latin1", {"jpg": jpeg_bytes(300, 300), "txt": "caf\xe9".encode("latin-1")},
                                    Rules())
    assert record is None and reason == "bad_caption"


def test_the_dataset_does_not_depend_on_the_worker_count(tmp_path):
    for shard in range(3):
        write_wds(tmp_path / "wds", [Sample(f"s{shard}_{i}", jpeg_bytes(260, 270), f"c{i}") for i in range(4)], shard)
    stats = convert(tmp_path / "wds", tmp_path / "mds", workers=2)
    assert stats["kept"] == 12 and mds.count(tmp_path / "mds") == 12
    assert sorted(p.name for p in (tmp_path / "mds").iterdir()) == ["00000", "00001", "00002", "convert_stats.json",
                                                                    "index.json"]  # one part per download shard
    convert(tmp_path / "wds", tmp_path / "mds1", workers=1)
    keys = [[s["key"] for s in mds.iter_samples(r)] for r in mds.shard_readers(tmp_path / "mds")]
    assert keys == [[s["key"] for s in mds.iter_samples(r)] for r in mds.shard_readers(tmp_path / "mds1")]
    assert keys == [[f"s{shard}_{i}" for i in range(4)] for shard in range(3)]  # in download shard order


def test_a_broken_png_is_a_counted_skip():
    # a 64 x 48 PNG with corrupted bytes, found by fuzzing: Pillow raises SyntaxError ("broken PNG file"), not OSError
    broken = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000400000003008020000002e29eb480000000049444154789c"
                           "edcf410dc02000c040e0")
    record, reason = convert_sample("broken", {"png": broken, "txt": b"a caption"}, Rules(min_side=0, resize_to=0))
    assert record is None and reason == "bad_image"


def test_truncated_tar_fails_naming_it_and_leaves_no_output(tmp_path):
    wds = crafted(tmp_path)
    data = tar_path(wds, 0).read_bytes()
    tar_path(wds, 0).write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="00000.tar"):
        convert(wds, tmp_path / "mds")
    assert not (tmp_path / "mds").exists() and not (tmp_path / ".mds.partial").exists()


def test_unfinished_shards_are_left_out_and_missing_input_is_an_error(tmp_path):
    wds = crafted(tmp_path)
    tar_path(wds, 1).write_bytes(b"no stats file: still being written")
    assert convert(wds, tmp_path / "mds")["input_shards"] == 1
    with pytest.raises(UserError, match="already exists"):
        convert(wds, tmp_path / "mds")
    with pytest.raises(UserError, match="no such directory"):
        convert(tmp_path / "nope", tmp_path / "other")
    assert run(["convert", "--input", str(wds), "--out", str(tmp_path / "cli"), "--min-side", "512"]) == 0


@pytest.mark.parametrize("raw, clean", [
    ("<p>A <b>red</b> barn &amp; a field</p>", "a red barn a field"),  # markup and entities go
    ("Sunset over the bay https://example.com/p/123 www.shop.com", "sunset over the bay"),
    ("Photo by @jane_doe on the beach", "photo by on the beach"),
    ("\u00e2\u20ac\u0153mojibake\u00e2\u20ac\u009d caf\u00e9 \uff26\uff35\uff2c\uff2c width",
     '"mojibake" caf\u00e9 full width'),  # ftfy repairs mis-decoded UTF-8; full-width letters normalised
    ("\u6771\u4eac Tokyo tower at night", "tokyo tower at night"),  # CJK text goes
    ("red%20shoes%20for%20sale", "red shoes for sale"),
    ("plain caption", "plain caption"),
])
def test_convert_cleans_captions_with_the_reference_cleaner(raw, clean):
    record, outcome = convert_sample("k", {"jpg": jpeg_bytes(300, 300), "txt": raw.encode()},
                                     Rules(clean_captions=True))
    assert (record["caption"], outcome) == (clean, "kept")


def test_a_caption_that_cleans_to_nothing_is_skipped_and_cleaning_reads_a_bounded_prefix():
    image = jpeg_bytes(300, 300)
    assert convert_sample("k", {"jpg": image, "txt": b"<br/> @someone"}, Rules(clean_captions=True)) == \
        (None, "bad_caption")
    assert clean_caption("a" * 5000) == "a" * 1000  # the text encoder reads 77 tokens


def png_header(width: int, height: int) -> bytes:
    """The start of an RGB PNG of that size: Pillow reads its size from it, and there is nothing to decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_cap_is_skipped_before_decoding(monkeypatch):
    # issue 29: Pillow only warns between 89.5 and 179 MP, so such an image was decoded in full (0.3 GB as RGB)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    record, reason = convert_sample("huge", {"png": png_header(10_000, 9_000), "txt": b"a caption"}, Rules())
    assert (record, reason, decoded) == (None, "too_large", [])
    image = {"jpg": jpeg_bytes(300, 300), "txt": b"a caption"}
    assert convert_sample("capped", image, Rules(max_pixels=300 * 300 - 1)) == (None, "too_large")
    assert convert_sample("at_cap", image, Rules(max_pixels=300 * 300))[1] == "kept"


@pytest.mark.parametrize("value", ["0", "89478486", "many"])
def test_the_pixel_cap_stays_below_pillow_s_limit(value, capsys):
    with pytest.raises(SystemExit):
        run(["convert", "--input", "in", "--out", "out", "--max-pixels", value])
    assert "expected an integer from 1 to Pillow's limit 89478485" in capsys.readouterr().err


def test_merge_parts_names_a_missing_part_and_one_outside_its_folder(tmp_path):
    with pytest.raises(UserError, match=r"parts/1/index.json: missing"):
        run(["merge-parts", "--out", str(tmp_path / "parts"), str(tmp_path / "parts" / "1")])
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "index.json").write_text('{"version": 2, "shards": []}')
    with pytest.raises(UserError, match="not a folder directly inside --out"):
        run(["merge-parts", "--out", str(tmp_path / "parts"), str(tmp_path / "elsewhere")])
