import json

import pytest

from microdit.errors import UserError
from microdit.eval.captions import read_caption_file, read_source_captions, sample_captions
from microdit.files import write_jsonl
from eval_helpers import smooth_images, write_shards


@pytest.fixture
def coco_annotations(tmp_path):
    """A captions_val2014.json in COCO's format: 20 images, 2 captions each."""
    images = [{"id": 100 + i, "file_name": f"COCO_val2014_{100 + i:012d}.jpg"} for i in range(20)]
    annotations = [{"image_id": 100 + i, "id": 2 * i + j, "caption": f"caption {j} of image {i}"}
                   for i in range(20) for j in range(2)]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_sample_is_seeded_and_one_caption_per_image(coco_annotations):
    captions = read_source_captions(coco_annotations)
    assert len(captions) == 20 and captions["COCO_val2014_000000000103"] == "caption 0 of image 3"
    first = sample_captions(captions, 8, seed=7)
    assert first == sample_captions(dict(reversed(list(captions.items()))), 8, seed=7)  # order of the source
    assert [row["index"] for row in first] == list(range(8))
    assert len({row["image_id"] for row in first}) == 8
    assert first != sample_captions(captions, 8, seed=8)
    assert sample_captions(captions, 5, seed=7) == first[:5]


def test_captions_from_shards_and_file_round_trip(tmp_path):
    texts = [f"a gradient number {i}" for i in range(6)]
    wds = write_shards(tmp_path / "wds", smooth_images(6, 16, seed=0), texts)
    captions = read_source_captions(wds)
    assert sorted(captions.values()) == sorted(texts)
    rows = sample_captions(captions, 6, seed=0)
    write_jsonl(rows, tmp_path / "captions.jsonl")
    assert read_caption_file(tmp_path / "captions.jsonl") == rows


def test_too_many_or_bad_captions_are_user_errors(tmp_path, coco_annotations):
    with pytest.raises(UserError, match="only 20"):
        sample_captions(read_source_captions(coco_annotations), 21, seed=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": 1, "caption": "x"}\n')
    with pytest.raises(UserError, match="in order"):
        read_caption_file(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no captions"):
        read_source_captions(tmp_path / "empty")


def test_a_bad_caption_is_a_counted_skip_not_a_rejected_shard(tmp_path):
    # issue 29: one non-UTF-8 caption made eval-captions reject its whole shard
    import io
    import tarfile

    wds = write_shards(tmp_path / "wds", smooth_images(3, 16, seed=0), ["a", "b", "c"])
    with tarfile.open(wds / "00000.tar", "a") as tar:
        for name, data in (("latin1.png", b"x"), ("latin1.txt", "caf\xe9".encode("latin-1"))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    skipped = {}
    captions = read_source_captions(wds, skipped)
    assert sorted(captions.values()) == ["a", "b", "c"] and skipped == {"bad_caption": 1}
