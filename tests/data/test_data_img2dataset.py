"""The cc12m default route for real: img2dataset against a loopback http.server with a 404 and a corrupt image."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from data_helpers import jpeg_bytes, run
from microdit.data.shards import list_shards, read_shard


@pytest.fixture
def image_server(tmp_path):
    """(base URL, served directory); the server is stopped by its own process handle."""
    root = tmp_path / "www"
    root.mkdir()
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", str(root)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port NNNNN (http://127.0.0.1:NNNNN/) ..."
        port = int(banner.split(" port ")[1].split()[0])
        yield f"http://127.0.0.1:{port}", root
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_img2dataset_download_counts_failures_and_feeds_convert(tmp_path, image_server):
    base, root = image_server
    for i in range(3):
        (root / f"good{i}.jpg").write_bytes(jpeg_bytes(300 + 10 * i, 280))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    names = ["good0.jpg", "missing.jpg", "good1.jpg", "corrupt.jpg", "good2.jpg"]
    pd.DataFrame({"url": [f"{base}/{n}" for n in names], "caption": [f"caption of {n}" for n in names]}
                 ).to_parquet(tmp_path / "urls.parquet")

    out = tmp_path / "wds"
    assert run(["download", "cc12m", "--out", str(out), "--url-list", str(tmp_path / "urls.parquet"),
                "--processes", "1", "--threads", "4", "--timeout", "5"]) == 0

    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["count"] == 5 and stats["successes"] == 3
    assert stats["failed_to_download"] + stats["failed_to_resize"] == 2
    captions = sorted(files["txt"].decode() for _, files in read_shard(list_shards(out)[0]))
    assert captions == ["caption of good0.jpg", "caption of good1.jpg", "caption of good2.jpg"]

    assert run(["convert", "--input", str(out), "--out", str(tmp_path / "mds")]) == 0
    convert_stats = json.loads((tmp_path / "mds" / "convert_stats.json").read_text())
    assert convert_stats["kept"] == 3 and sum(convert_stats["skipped"].values()) == 0
