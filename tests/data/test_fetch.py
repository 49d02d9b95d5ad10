"""HTTP downloads: a broken transfer resumes with a Range request, against a loopback server that honours Range (or
ignores it, as some do), and reports its progress in lines on a non-terminal."""
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from microdit.data.sources.fetch import http_download
from microdit.errors import UserError

DATA = random.Random(0).randbytes(300_000)


class RangeServer(ThreadingHTTPServer):
    """Serves DATA at every path; honours `Range: bytes=N-` unless told not to; can cut its next answer short."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.honour_range, self.cut_next_at, self.ranges = True, None, []


class RangeHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        asked = self.headers.get("Range")
        server.ranges.append(asked)
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked and server.honour_range else 0
        if start >= len(DATA):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(DATA)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        body = DATA[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, server.cut_next_at = server.cut_next_at, None
        self.wfile.write(body[:cut])  # a connection that drops after `cut` bytes when cut is set


@pytest.fixture
def server():
    server = RangeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/sa_000001.tar"


def test_a_broken_download_resumes_from_its_partial_file_with_progress_lines(tmp_path, server, capsys):
    dest, partial = tmp_path / "sa_000001.tar", tmp_path / ".sa_000001.tar.partial"
    server.cut_next_at = 120_000
    with pytest.raises(UserError, match="download failed"):
        http_download(url(server), dest)
    assert not dest.exists() and partial.read_bytes() == DATA[:120_000]
    assert http_download(url(server), dest).read_bytes() == DATA
    assert server.ranges == [None, "bytes=120000-"] and not partial.exists()
    lines = capsys.readouterr().err.splitlines()  # not a terminal: whole lines, no carriage returns
    assert lines[-1].startswith("sa_000001.tar: 100%") and "293k/293k" in lines[-1]
    http_download(url(server), dest)  # a finished file is not fetched again
    assert len(server.ranges) == 2


def test_a_server_that_ignores_range_sends_the_whole_file_again(tmp_path, server):
    server.honour_range = False
    (tmp_path / ".f.tar.partial").write_bytes(b"stale bytes")
    assert http_download(url(server), tmp_path / "f.tar").read_bytes() == DATA


def test_a_partial_file_that_is_already_whole_or_too_long(tmp_path, server):
    (tmp_path / ".whole.tar.partial").write_bytes(DATA)
    assert http_download(url(server), tmp_path / "whole.tar").read_bytes() == DATA
    (tmp_path / ".long.tar.partial").write_bytes(DATA + b"extra")
    with pytest.raises(UserError, match="longer than the file; removed it, run again"):
        http_download(url(server), tmp_path / "long.tar")
    assert not (tmp_path / ".long.tar.partial").exists()
