"""Keeps bench/run_benchmark.py from rotting: its tiny mode end to end, and its pure helpers.

The tiny run (``--tiny --mode all``) goes through every measurement (original loop, each backend,
the pipeline end to end, the per-stage costs, the 100k-row scale check shrunk to 400 rows) with
the small bundled model, one repeat, a few crops: about 30 s on an idle 2-core machine.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "run_benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run_benchmark_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # minutes: run with -m slow (README, "Tests")
def test_tiny_benchmark_runs_every_mode(tmp_path):
    out = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--mode", "all", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    everything = json.loads((out / "latest.json").read_text())
    result = everything["bench"]
    assert list(everything["models"]) == ["x0_25_msmt17"]  # --tiny: the bundled default weights
    assert result["original_loop"]["crops_per_s"]["median"] > 0
    from model.policy import cpu_supports_bf16

    expected = {"torch", "onnxruntime", "onnxruntime_noflush"} | ({"openvino_bf16"} if cpu_supports_bf16() else set())
    assert set(result["model_only"]) == expected
    checks = result["issue13"]
    assert checks["ort_flush_vs_noflush_model_only"]["target"] == 3.5
    assert checks["e2e_vs_original_loop"]["target"] == 10.0
    if cpu_supports_bf16():
        assert 0.99 < checks["bf16_cosine_vs_fp32"]["min"] < 1.0
    for backend in result["model_only"].values():
        assert set(backend["img_per_s"]) == {"1", "4"}
        assert all(s["median"] > 0 for s in backend["img_per_s"].values())
        assert backend["peak_rss_mb"]["max"] > 50
    e2e = result["e2e"]
    assert e2e["counters"]["rows_encoded"] == e2e["rows"] == 100  # 4 batches of 32: a steady interval
    assert e2e["steady_rows_per_s"]["median"] > 0 and e2e["startup_s"]["median"] > 0
    assert e2e["peak_rss_mb"]["max"] > 50
    for target in result["targets"].values():
        assert isinstance(target["met"], bool) and math.isfinite(target["value"])
    assert result["stages"]["decode_ms_per_row"] > 0
    assert (out / "latest.png").stat().st_size > 10_000
    assert "end to end vs original loop" in (out / "latest.md").read_text()

    scale = json.loads((out / "scale_latest.json").read_text())["scale"]
    verification = scale["verification"]
    assert verification["ok"], verification["problems"]
    assert verification["rows_in"] == 400 == verification["feature_rows"] + verification["error_rows"]
    assert verification["per_reason_counts_match"] and verification["every_error_row_holds_its_original_data"]
    # tiny shards are sampled whole for the column types, so no row is a bad_column_value there
    assert {"bad_csv_record", "empty_cell", "size_mismatch"} <= set(verification["errors_per_reason"])
    assert scale["peak_tree_rss_mb"] > 50
    assert (out / "scale_latest.png").stat().st_size > 5_000


def test_steady_rate_skips_the_first_batch(bench):
    # three batches of 4 rows leaving the model at t = 10, 11, 12 s
    stamps = [t + i * 1e-5 for t in (10.0, 11.0, 12.0) for i in range(4)]
    assert bench.batches_of(stamps) == [4, 4, 4]
    rate = bench.steady_rate(stamps)
    assert rate["steady_rows_per_s"] == pytest.approx(8 / 2.0, rel=1e-3)
    assert bench.steady_rate(stamps[:4])["steady_rows_per_s"] is None


def test_scale_plan_keeps_broken_records_clear_of_multiline_cells(bench):
    kinds, planned = bench.plan_scale_rows(20_000, 0.1, 1, 0, shards=4)
    assert len(kinds) == 20_000
    assert planned["bad_rows"] == sum(1 for kind, _ in kinds if kind != "good")
    assert planned["broken_csv_records"] == 10 and planned["bad_column_values"] == 10
    assert 1_900 <= planned["bad_rows"] <= 2_100
    for index, (kind, _) in enumerate(kinds):
        if kind == "broken":
            following = kinds[index + 1 : index + bench.BROKEN_LOOKAHEAD]
            assert not any(k == "broken" or (k == "cell" and bench._newlines(str(c.cell))) for k, c in following)
        if kind == "column":
            assert index % 5_000 >= bench.SCHEMA_SAMPLE  # every file's type sample stays clean
    used = {payload.name for kind, payload in kinds if kind == "cell"}
    assert len(used) == planned["bad_cell_kinds_used"] - 1  # the 50 MB cell is left out (0 copies)


def test_fallbacks_without_shared_material(bench, tmp_path):
    rows, source = bench.seed_rows(None)
    assert len(rows) == 198 and "synthetic" in source
    assert all(isinstance(cell, str) and cell.startswith("{'width'") for *_, cell in rows)
    path, source = bench.bench_weights(None, "osnet_ibn_x1_0", None, tmp_path)
    assert Path(path).is_file() and "random" in source
    from model import load_osnet

    assert load_osnet(path).arch == "osnet_ibn_x1_0"
