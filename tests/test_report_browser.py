"""The HTML reports of evaluate and compare, opened in headless Chromium as a user would open them.

Needs Debian's ``chromium`` (``apt-get update && apt-get install -y chromium``); skipped with that
reason when no Chromium is found. The crops shown come from the shared seed table, in tmp only.
"""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.chromium import INSTALL_HINT, dump_dom, find_chromium, screenshot
from tests.conftest import REPO_ROOT
from tests.reid_reference import seed_columns, write_parquet_run

GREEN, RED, BLUE = (0x1E, 0x9E, 0x3A), (0xD3, 0x3A, 0x2C), (0x2F, 0x6F, 0xD6)


@pytest.fixture(scope="module")
def browser():
    path = find_chromium()
    if path is None:
        pytest.skip(f"no Chromium found to render the report: install it with `{INSTALL_HINT}`")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, seed_table, reference_dir):
    rows = seed_columns(seed_table)
    data = np.load(reference_dir / "osnet_x0_25_msmt17.npz")
    by_file = {str(f): v for f, v in zip(data["files"], data["features"])}
    features = np.stack([by_file[r["file"]] for r in rows])
    base = tmp_path_factory.mktemp("report_runs")
    moved = features.copy()
    moved[[3, 40, 41]] += np.random.default_rng(1).normal(0, 0.3, size=(3, features.shape[1])).astype(np.float32)
    return write_parquet_run(base / "a", rows, features), write_parquet_run(base / "b", rows, moved)


def _tool(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _body(dom: str) -> dict[str, str]:
    tag = re.search(r"<body([^>]*)>", dom).group(1)
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', tag))


def _has_colour(image: Image.Image, colour: tuple[int, int, int]) -> bool:
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    return bool((np.abs(pixels - colour).sum(axis=1) < 12).sum() > 200)


def test_evaluate_report_renders_every_crop(browser, runs, seed_table, tmp_path):
    report_dir = tmp_path / "report"
    _tool("pipeline.evaluate", "--features", str(runs[0]), "--input", str(seed_table), "--id_column",
          "track_id", "--camera_column", "camera", "--query_cameras", "01", "--report", str(report_dir))
    page = report_dir / "report.html"
    assert (report_dir / "similarity_histogram.png").stat().st_size > 1000
    dom = dump_dom(browser, page)
    body = _body(dom)
    # 12 queries x (query + top 10), every one an image that loaded, plus the histogram
    assert body == {"images": str(1 + 12 * 11), "broken": "0", "thumbnails": str(12 * 11), "status": "ok"}
    # green = the query's identity, red = another: read back from the rendered rows
    rows = dom.split('<div class="rank">')[1:]
    assert len(rows) == 12
    for row in rows:
        cells = re.findall(r'<div class="cell (query|match|miss)">.*?<div class="cap">(.*?)</div>', row)
        assert len(cells) == 11 and cells[0][0] == "query"
        query_id = re.search(r"id (\S+)<br>cam", cells[0][1]).group(1)
        for kind, caption in cells[1:]:
            gallery_id = re.search(r"id (\S+)$", caption).group(1)
            assert (kind == "match") == (gallery_id == query_id), (kind, caption, query_id)
    shot = screenshot(browser, page, tmp_path / "report.png")
    image = Image.open(shot)
    assert image.size == (1100, 1500)
    assert _has_colour(image, GREEN) and _has_colour(image, RED) and _has_colour(image, BLUE)


def test_compare_report_shows_the_rows_that_moved(browser, runs, seed_table, tmp_path):
    report_dir = tmp_path / "compare"
    _tool("pipeline.compare", str(runs[0]), str(runs[1]), "--input", str(seed_table), "--moved", "5",
          "--report", str(report_dir))
    dom = dump_dom(browser, report_dir / "report.html")
    assert _body(dom) == {"images": str(1 + 5), "broken": "0", "thumbnails": "5", "status": "ok"}
    # the three perturbed rows come first
    frames = re.findall(r"frame=(\d+)<br>", dom)
    assert sorted(map(int, frames[:3])) == [3, 40, 41]


def test_report_without_the_input_says_how_to_get_crops(browser, runs, tmp_path):
    report_dir = tmp_path / "no_input"
    _tool("pipeline.evaluate", "--features", str(runs[0]), "--id_column", "track_id", "--camera_column",
          "camera", "--gallery_queries", "3", "--report", str(report_dir))
    dom = dump_dom(browser, report_dir / "report.html")
    assert _body(dom) == {"images": "1", "broken": "0", "thumbnails": str(3 * 11), "status": "ok"}
    assert "pass the run's input table to see the crops" in dom
