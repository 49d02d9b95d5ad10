"""The network-free parts of the hub/web sources: subsets, resume, metadata parsing and caption pairing."""
import json
import zipfile

import pandas as pd
import pytest

from data_helpers import jpeg_bytes, make_tar, parse, run
from microdit.data.shards import finished_shards, read_shard, tar_path
from microdit.data.sources import SOURCES, cc12m, coco2014, diffdb, jdb, sa1b, textcaps
from microdit.data.sources.common import iter_tar_images, iter_zip_images, run_shards, select_subset, \
    write_paired_shard
from microdit.data.sources.fetch import hub_token
from microdit.data.sources.synthetic import shard_samples
from microdit.data.shards import write_shard
from microdit.errors import UserError


def test_every_source_has_a_download_command():
    for name in SOURCES:
        args = parse(["download", name, "--out", "x", "--subset", "small"] +
                     (["--links", "l", "--captions", "c"] if name == "sa1b" else []))
        assert args.source == name and args.subset == "small" and callable(args.func)


@pytest.mark.parametrize("abbreviation", ["--ou", "--summ", "--subs"])
def test_a_download_option_cannot_abbreviate_the_rule_s_own_flags(abbreviation, capsys):
    # issue 29: the workflow passes a config's options after --out/--subset; an abbreviation would override them
    with pytest.raises(SystemExit):
        parse(["download", "synthetic", "--out", "x", abbreviation, "elsewhere"])
    assert f"unrecognized arguments: {abbreviation}" in capsys.readouterr().err


def test_small_subset_is_about_one_percent():
    assert select_subset(list(range(2176)), "small") == list(range(22))
    assert select_subset(list(range(1, 14001)), "small") == list(range(1, 141))
    assert select_subset([7], "small") == [7] and select_subset([1, 2], "full") == [1, 2]
    with pytest.raises(UserError):
        select_subset([1], "tiny")


def test_finished_shards_are_skipped_and_half_written_ones_redone(tmp_path):
    def make(i):
        return write_shard(tmp_path, i, shard_samples(i, 2, 6, 0, 32, 32))

    run_shards(tmp_path, [0, 1], make)
    tar_path(tmp_path, 2).write_bytes(b"half a tar")  # killed before its stats file
    (tmp_path / ".00002.tar.abc.tmp").write_bytes(b"")
    made = []
    summary = run_shards(tmp_path, [0, 1, 2], lambda i: made.append(i) or make(i))
    assert made == [2] and summary == {"done": 1, "skipped_finished": 2}
    assert finished_shards(tmp_path) == {0, 1, 2} and len(list(read_shard(tar_path(tmp_path, 2)))) == 2


def test_parts_of_a_download_are_its_shards_under_their_own_ids(tmp_path):
    def download(out, *options):
        assert run(["download", "synthetic", "--out", str(out), "--num-samples", "10", "--shard-size", "2",
                    "--min-size", "24", "--max-size", "32", *options]) == 0
        return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}

    whole = download(tmp_path / "whole")
    parts = [download(tmp_path / f"part{i}", "--part", str(i), "--parts", "2") for i in range(2)]
    assert list(parts[0]) == ["00000.tar", "00001.tar"] and list(parts[1]) == ["00002.tar", "00003.tar", "00004.tar"]
    assert {**parts[0], **parts[1]} == whole
    with pytest.raises(UserError, match="--part 2 --parts 2: expected 0 <= part < parts"):
        download(tmp_path / "part2", "--part", "2", "--parts", "2")
    with pytest.raises(UserError, match="only 5 shard.s. to split .with subset full.; expected parts <= 5"):
        download(tmp_path / "part6", "--part", "0", "--parts", "6")


def test_cc12m_parts_take_whole_shards_of_the_url_list_and_keep_their_ids(tmp_path):
    pd.DataFrame({"url": [f"http://h/{i}.jpg" for i in range(7)], "caption": ["c"] * 7}
                 ).to_parquet(tmp_path / "urls.parquet")
    lists = []
    for part in range(2):
        out = tmp_path / f"part{part}"
        out.mkdir()
        args = parse(["download", "cc12m", "--out", str(out), "--url-list", str(tmp_path / "urls.parquet"),
                      "--shard-size", "2", "--part", str(part), "--parts", "2"])
        path, first = cc12m.part_url_list(args, out)
        lists.append((list(pd.read_parquet(path)["url"]), first))
    # 4 shards of 2 rows: shards 0-1 and 2-3, the last one short
    assert lists == [([f"http://h/{i}.jpg" for i in range(4)], 0), ([f"http://h/{i}.jpg" for i in range(4, 7)], 2)]
    staging = tmp_path / "part1" / cc12m.IMG2DATASET_FOLDER
    write_shard(staging, 1, [])
    cc12m.link_shards(staging, tmp_path / "part1", first=2)
    assert finished_shards(tmp_path / "part1") == {3}


def test_a_download_resumes_only_its_own_shards(tmp_path):
    out = tmp_path / "wds"

    def download(*options):
        assert run(["download", "synthetic", "--out", str(out), "--num-samples", "4", "--shard-size", "2",
                    "--min-size", "24", "--max-size", "32", *options]) == 0
        return {key: files["txt"] for tar in sorted(out.glob("*.tar")) for key, files in read_shard(tar)}

    first = download("--seed", "0")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert download("--seed", "0") == first  # the same options: finished shards skipped
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before
    other = download("--seed", "1")  # other options: the old shards are not taken for this download's
    assert other != first
    (stale,) = tmp_path.glob("wds.stale-*")
    assert {key: files["txt"] for tar in sorted(stale.glob("*.tar")) for key, files in read_shard(tar)} == first


def test_cc12m_hub_small_subset_is_the_references_tars_0_to_22(tmp_path, monkeypatch):
    from microdit.data.sources import fetch

    fetched = []

    def fake_hub_download(repo, filename, cache_dir, **kwargs):
        fetched.append(filename)
        cache_dir.mkdir(parents=True, exist_ok=True)
        return make_tar(cache_dir / filename, {"000.jpg": b"x", "000.txt": b"a caption"})

    monkeypatch.setattr(fetch, "hub_download", fake_hub_download)
    args = parse(["download", "cc12m", "--route", "hub", "--subset", "small", "--out", str(tmp_path)])
    cc12m.download(args)
    assert fetched == [f"cc12m-train-{i:04d}.tar" for i in range(23)] and finished_shards(tmp_path) == set(range(23))


def test_sa1b_shards_are_numbered_by_archive_not_by_line():
    assert sa1b.archive_number("sa_000020.tar") == 20
    with pytest.raises(UserError, match="not an SA-1B archive"):
        sa1b.archive_number("images.tar")


def test_sa1b_captions_unpack_is_redone_after_an_interruption(tmp_path, monkeypatch):
    from microdit.data.sources import fetch

    def fake_hub_download(repo, filename, cache_dir, **kwargs):
        cache_dir.mkdir(parents=True, exist_ok=True)
        return make_tar(cache_dir / filename, {"captions/sa_1.txt": b"one", "captions/sa_2.txt": b"two"})

    monkeypatch.setattr(fetch, "hub_download", fake_hub_download)
    captions = tmp_path / "captions"
    (captions / "_archive").mkdir(parents=True)  # interrupted: the archive fetched, one caption out
    (captions / "sa_1.txt").write_text("o")
    sa1b.fetch_captions(str(captions))
    lookup = sa1b.caption_lookup(str(captions))
    assert (lookup("sa_1"), lookup("sa_2")) == ("one", "two")

    monkeypatch.setattr(fetch, "hub_download", lambda *a, **k: pytest.fail("fetched twice"))
    sa1b.fetch_captions(str(captions))  # finished: not fetched again
    own = tmp_path / "own"
    own.mkdir()
    (own / "sa_9.txt").write_text("mine")
    sa1b.fetch_captions(str(own))  # a directory the user filled: used as it is


def test_sa1b_links_and_caption_pairing(tmp_path):
    links = tmp_path / "links.txt"
    links.write_text("file_name\tcdn_link\nsa_000000.tar\thttps://x/a?sig=1\n\nsa_000001.tar\thttps://x/b\n")
    assert sa1b.parse_links(str(links)) == [("sa_000000.tar", "https://x/a?sig=1"), ("sa_000001.tar", "https://x/b")]
    links.write_text("sa_000000.tar https://x/a\n")
    with pytest.raises(UserError, match="links.txt:1"):
        sa1b.parse_links(str(links))

    captions = tmp_path / "captions"
    captions.mkdir()
    (captions / "sa_1.txt").write_text("a dog on a beach\n")
    (captions / "sa_3.txt").write_bytes(b"\xff\xfe bad")  # not UTF-8 -> skipped
    src = make_tar(tmp_path / "sa.tar", {"sa_1.jpg": jpeg_bytes(8, 8), "sa_1.json": b"{}", "sa_2.jpg": jpeg_bytes(8, 8),
                                          "sa_3.jpg": jpeg_bytes(8, 8)})
    with open(src, "rb") as f:
        stats = write_paired_shard(tmp_path / "out", 0, iter_tar_images(f, "sa.tar"),
                                   sa1b.caption_lookup(str(captions)))
    assert stats == {"count": 3, "successes": 1, "skipped": {"no_caption": 2}}
    [(key, files)] = list(read_shard(tar_path(tmp_path / "out", 0)))
    assert key == "sa_1" and files["txt"] == b"a dog on a beach"


def test_a_dot_in_a_file_name_keeps_the_sample_whole(tmp_path):
    # a webdataset key ends at the first dot: 'img.v2.jpg' written as is reads back as key 'img' with members
    # 'v2.jpg', 'v2.txt', ... (no image, no caption); a key repeated next to itself would merge two samples
    images = [("x/img.v2.jpg", b"1"), ("x/img_v2.jpg", b"2"), ("x/other.jpg", b"3")]
    stats = write_paired_shard(tmp_path, 0, images, lambda stem: f"caption of {stem}")
    assert stats == {"count": 3, "successes": 2, "skipped": {"duplicate_key": 1}}
    samples = dict(read_shard(tar_path(tmp_path, 0)))
    assert sorted(samples) == ["img_v2", "other"]
    assert samples["img_v2"]["jpg"] == b"1" and samples["img_v2"]["txt"] == b"caption of img.v2"
    assert json.loads(samples["img_v2"]["json"]) == {"source_name": "x/img.v2.jpg"}


def test_jdb_archive_ids_from_listing_and_prompts(tmp_path, monkeypatch):
    files = ["data/train/imgs/000.tgz", "data/train/imgs/001.tgz", "data/valid/imgs/000.tgz", "README.md"]
    assert jdb.archive_ids(files, "train") == [0, 1] and jdb.archive_ids(files, "valid") == [0]
    rows = [{"img_path": "./train/imgs/000/abc.jpg", "prompt": " a castle, 4k ", "caption": "no"},
            {"img_path": "./train/imgs/000/def.jpg", "prompt": ""}]
    jsonl = "\n".join(json.dumps(r) for r in rows).encode()
    anno = make_tar(tmp_path / "anno.jsonl.tgz", {"train_anno_realease_repath.jsonl": jsonl}, mode="w:gz")
    assert jdb.load_prompts(anno) == {"abc": "a castle, 4k"}
    bad = make_tar(tmp_path / "bad.tgz", {"x.jsonl": b'{"img_path": "a.jpg", "prompt": "p"}\nnot json\n'}, "w:gz")
    with pytest.raises(UserError, match="x.jsonl:2"):
        jdb.load_prompts(bad)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UserError, match="HF_TOKEN"):
        hub_token(required=True)


def test_diffdb_nsfw_filter_and_zip_pairing(tmp_path):
    pd.DataFrame({"image_name": ["a.webp", "b.webp", "c.webp", "d.webp"], "prompt": ["cat", "dog", "gore", None],
                  "image_nsfw": [0.1, 0.2, 0.9, 0.0], "prompt_nsfw": [0.0, 0.05, 0.1, 0.0]}
                 ).to_parquet(tmp_path / "meta.parquet")
    prompts, dropped = diffdb.safe_prompts(tmp_path / "meta.parquet", 0.2)
    assert prompts == {"a": "cat", "b": "dog"} and dropped == 1
    assert diffdb.archive_name(1) == "diffusiondb-large-part-1/part-000001.zip"
    assert diffdb.archive_name(10001) == "diffusiondb-large-part-2/part-010001.zip"
    with zipfile.ZipFile(tmp_path / "part.zip", "w") as z:
        for name in ("a.webp", "c.webp", "part-000001.json"):
            z.writestr(name, b"img")
    stats = write_paired_shard(tmp_path / "out", 1, iter_zip_images(tmp_path / "part.zip"), prompts.get)
    assert stats["successes"] == 1 and stats["skipped"] == {"no_caption": 1}
    assert next(read_shard(tar_path(tmp_path / "out", 1)))[1].keys() == {"webp", "txt", "json"}


def test_coco_first_caption_in_annotation_order():
    annotations = {"images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                              {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"}],
                   "annotations": [{"image_id": 2, "caption": "second image, first"},
                                   {"image_id": 1, "caption": " first image "},
                                   {"image_id": 2, "caption": "second image, later"}]}
    assert coco2014.first_captions(annotations) == {"COCO_val2014_000000000001": "first image",
                                                    "COCO_val2014_000000000002": "second image, first"}
    with pytest.raises(UserError, match="images"):
        coco2014.first_captions({"annotations": []}, "captions_val2014.json")
    assert coco2014.image_shards([f"{i}.jpg" for i in range(250)], "small", 2) == [["0.jpg", "1.jpg"], ["10.jpg"]]


def test_textcaps_parquet_rows(tmp_path):
    assert textcaps.parquet_files(["data/train-0.parquet", "x/validation/0.parquet", "x/test/0.parquet"]) == \
        ["data/train-0.parquet", "x/validation/0.parquet"]
    pd.DataFrame({"image": [{"bytes": jpeg_bytes(8, 8), "path": None}, {"bytes": jpeg_bytes(8, 8), "path": None}],
                  "image_id": ["i1", "i2"], "reference_strs": [["a sign saying STOP", "other"], []]}
                 ).to_parquet(tmp_path / "t.parquet")
    stats = textcaps.parquet_shard(tmp_path / "out", 0, tmp_path / "t.parquet")
    assert stats["successes"] == 1 and stats["skipped"] == {"no_caption": 1}
    assert next(read_shard(tar_path(tmp_path / "out", 0)))[1]["txt"] == b"a sign saying STOP"


def test_cc12m_small_url_list_is_stable(tmp_path):
    pd.DataFrame({"url": [f"http://h/{i}.jpg" for i in range(300)], "caption": ["c"] * 300}
                 ).to_csv(tmp_path / "cc12m.tsv", sep="\t", index=False)
    args = parse(["download", "cc12m", "--out", str(tmp_path), "--url-list", str(tmp_path / "cc12m.tsv"),
                  "--subset", "small"])
    path, first = cc12m.part_url_list(args, tmp_path)
    assert list(pd.read_parquet(path)["url"]) == ["http://h/0.jpg", "http://h/1.jpg", "http://h/2.jpg"]
    assert first == 0
    with pytest.raises(UserError, match="missing column"):
        cc12m.read_url_list(str(tmp_path / "cc12m.tsv"), "URL", "caption")


@pytest.fixture
def loopback_server(tmp_path):
    """(base URL, served folder): a local HTTP server answering 404 for anything missing."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_a_signed_link_streams_and_its_failure_never_shows_the_query(tmp_path, loopback_server):
    from microdit.data.sources.fetch import http_download

    base, root = loopback_server
    make_tar(root / "sa_000001.tar", {"sa_1.jpg": jpeg_bytes(8, 8)})
    signed = "?_nc_sid=SECRETSIG&oh=SECRETTOKEN"
    captions = {"sa_1": "a dog on a beach"}.get
    stats = sa1b.stream_shard(tmp_path / "out", 1, f"{base}/sa_000001.tar{signed}", captions)
    assert stats["successes"] == 1
    with pytest.raises(UserError) as failed:
        sa1b.stream_shard(tmp_path / "out", 2, f"{base}/sa_000002.tar{signed}", captions)
    assert str(failed.value) == f"{base}/sa_000002.tar: download failed (HTTP 404)"
    with pytest.raises(UserError, match="download failed") as failed:
        http_download(f"{base}/gone.zip{signed}", tmp_path / "gone.zip")
    assert "SECRET" not in str(failed.value) and not (tmp_path / "gone.zip").exists()


def test_a_truncated_or_corrupt_archive_is_named_and_leaves_no_shard(tmp_path):
    images = {f"{i}.jpg": jpeg_bytes(16, 16) for i in range(4)}
    whole = make_tar(tmp_path / "000.tgz", images, mode="w:gz").read_bytes()
    (tmp_path / "000.tgz").write_bytes(whole[: len(whole) // 2])  # an interrupted download
    with open(tmp_path / "000.tgz", "rb") as f, pytest.raises(UserError, match="000.tgz: a broken archive"):
        write_paired_shard(tmp_path / "out", 0, iter_tar_images(f, str(tmp_path / "000.tgz")), lambda stem: "a cat")
    (tmp_path / "part.zip").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match="part.zip: a broken archive"):
        write_paired_shard(tmp_path / "out", 1, iter_zip_images(tmp_path / "part.zip"), lambda stem: "a cat")
    assert finished_shards(tmp_path / "out") == set() and not list(tmp_path.glob("out/*.tar"))


def test_the_fetch_route_says_in_one_line_why_the_hub_failed(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    import requests
    from huggingface_hub.errors import HfHubHTTPError

    from microdit.cli import main
    from microdit.data.sources.fetch import hub_download

    # offline (as the tests run): the client's error, as the user met it, through the command
    assert main(["download", "textcaps", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("microdit download: error: hub dataset HuggingFaceM4/TextCaps (its file list): "
                                       "download failed (offline mode is on (HF_HUB_OFFLINE): unset it to download)\n")
    with pytest.raises(UserError, match=r"^hub dataset a/b, file c.tar: download failed \(offline mode is on"):
        hub_download("a/b", "c.tar", tmp_path / "hub")
    gone = requests.Response()
    gone.status_code = 404
    for raised, reason in [(HfHubHTTPError("404 Client Error\nRepository Not Found", response=gone),
                            "HTTP 404: no such dataset, file or revision"),
                           (requests.ConnectionError("Max retries exceeded\n..."),
                            "the hub cannot be reached (ConnectionError)")]:
        def failing(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as if online
        with pytest.raises(UserError) as failed:
            hub_download("a/b", "c.tar", tmp_path / "hub")
        assert str(failed.value) == f"hub dataset a/b, file c.tar: download failed ({reason})"
