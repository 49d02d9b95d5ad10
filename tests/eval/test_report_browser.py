"""The report as a reader sees it: rendered by headless Chromium (Debian's package; .ci/run installs it), with no
broken image and nothing wider than the window."""
import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microdit.sampling import save_image_grid

# appended to a copy of the page: after load, what a reader would see broken, as an attribute --dump-dom prints
CHECK = """<script>addEventListener("load", () => {
  const root = document.documentElement;
  document.body.setAttribute("data-check", JSON.stringify({
    images: document.images.length,
    broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    overflow: root.scrollWidth - root.clientWidth}));
});</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium not found: .ci/run installs Debian's chromium package before the tests")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


def rendered(page: Path, width: int) -> dict:
    """What Chromium finds on the page at this window width."""
    checked = page.with_name(page.stem + f".checked{width}.html")
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900",
                          "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    start = dom.index('data-check="') + len('data-check="')
    return json.loads(html.unescape(dom[start:dom.index('"', start)]))


@pytest.fixture
def report_page(run_dir, tmp_path) -> Path:
    """A report written by `microdit report` from a run's files: curves, a cut grid per stage, scores of two
    evaluated stages, their labelled samples beside the reference images, configs."""
    prompts = ["a red circle left of two blue squares on a white background", "three green triangles above a "
               "yellow circle on a black background", "a purple square below a red triangle on a beige background"]
    for stage in ("stage1", "stage2"):
        save_image_grid(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
                        run_dir / f"{stage}_grid.png")
        (run_dir / f"{stage}.yaml").write_text(
            f"steps: 1000\nglobal_batch: 2048\ninit: {{from: {Path.cwd() / 'results/x/train' / stage}}}\n"
            "data: {options: {datadirs: [" + ", ".join([str(Path.cwd() / "results/store/a/very/long/path")] * 3)
            + "]}}\n")
    # two evaluated stages at 32 and 64 px, the first 8 captions' samples beside their 64 px reference images
    captions = run_dir / "captions.jsonl"
    captions.write_text("".join(json.dumps({"index": i, "caption": prompts[i % 3] + " " + "very " * i + "long"})
                                + "\n" for i in range(10)))
    for folder, size in (("stage1_samples", 32), ("stage2_samples", 64), ("grid", 64)):
        (run_dir / folder).mkdir()
        for i in range(10 if folder != "grid" else 8):
            save_image_grid(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(i)),
                            run_dir / folder / f"{i:06d}.png")
    out = tmp_path / "report.html"
    (run_dir / "clip.json").write_text(json.dumps({"metric": "CLIP score", "value": 36.4, "model": "local-dir:x"}))
    options = ["--fid", f"stage1={run_dir / 'fid.json'}", "--eval-captions", str(captions), "--grid-reference",
               str(run_dir / "grid"), "--fd-context", f"reference images, 64 px={run_dir / 'fid.json'}",
               "--clip-ceiling", f"reference images, 64 px={run_dir / 'clip.json'}",
               "--clip-ceiling", f"VAE reconstructions, 64 px={run_dir / 'clip.json'}"]  # the widest table
    for stage in ("stage1", "stage2"):
        options += ["--eval-samples", f"{stage}={run_dir / f'{stage}_samples'}",
                    "--metrics", f"{stage}={run_dir / f'{stage}_metrics.jsonl'}",
                    "--train-stats", f"{stage}={run_dir / f'{stage}_stats.json'}",
                    "--grid", f"{stage}={run_dir / f'{stage}_grid.png'}",
                    "--stage-config", f"{stage}={run_dir / f'{stage}.yaml'}",
                    "--clip", f"{stage}={run_dir / 'clip.json'}", "--clip-floor", f"{stage}={run_dir / 'clip.json'}"]
    options += [arg for p in prompts for arg in ("--sample-prompt", p)]
    subprocess.run([Path(sys.executable).with_name("microdit"), "report", "--out", str(out), "--stages", "stage1",
                    "stage2",
                    "--fid", f"stage2={run_dir / 'fid.json'}", "--geneval", f"stage2={run_dir / 'geneval.json'}",
                    *options], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("width", [1280, 800])
def test_the_report_renders_with_every_image_and_no_sideways_scrolling(report_page, width):
    seen = rendered(report_page, width)
    # the curves, 3 prompts x 2 stages, and 8 captions x (a reference + 2 stages' samples)
    assert seen["images"] == 1 + 2 * 3 + 8 * 3 and seen["broken"] == [] and seen["overflow"] <= 0


def test_the_browser_check_sees_a_broken_image_and_a_page_too_wide(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img alt="gone" src="data:image/png;base64,AAAA">'
                    '<table><tr><td>' + "x" * 400 + "</td></tr></table></body></html>")
    seen = rendered(page, 800)
    assert seen["broken"] == ["gone"] and seen["overflow"] > 0
