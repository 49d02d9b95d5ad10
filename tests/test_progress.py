"""Progress off a terminal: whole lines, at most one per count, and a bad interval named in one line."""
import io
import re

import pytest

from microdit.errors import UserError
from microdit.progress import progress


def test_a_log_gets_one_line_per_redraw_and_none_twice_for_a_count(monkeypatch):
    monkeypatch.setenv("MICRODIT_PROGRESS_EVERY", "0")
    log = io.StringIO()
    for _ in progress(range(3), desc="encode", unit="img", stream=log):
        pass
    lines = log.getvalue().splitlines()
    assert [line.split("|")[0] for line in lines] == ["encode:   0%", "encode:  33%", "encode:  67%", "encode: 100%"]
    # tqdm writes a rate under one item per second as seconds per item, which a loaded machine can reach
    assert "\r" not in log.getvalue() and all(re.search(r"(img/s|s/img)\]$", line) for line in lines)


def test_an_interval_that_is_no_number_is_named(monkeypatch):
    monkeypatch.setenv("MICRODIT_PROGRESS_EVERY", "often")
    with pytest.raises(UserError, match="^MICRODIT_PROGRESS_EVERY='often': expected seconds between progress lines$"):
        progress(desc="x", stream=io.StringIO())
