"""Keeps bench/run_benchmark.py and bench/variants.py from rotting: their tiny modes end to end,
the baseline mode, and the pure helpers of bench/.

The tiny run (``--tiny --mode all``) goes through every measurement (original loop, each backend,
the pipeline end to end, the per-stage costs, the 100k-row scale check shrunk to 400 rows) with
the small bundled model, one repeat, a few crops: about 30 s on an idle 2-core machine.
"""
from __future__ import annotations

import glob
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import baseline, checkpoints, rates, tables

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "run_benchmark.py"


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
        # bf16's >= 2x is the trained x1.0 network's target; for this model it is only reported
        assert checks["bf16_vs_fp32_model_only"]["target"] is None
        assert checks["bf16_vs_fp32_model_only"]["met"] is None
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
    # the bundled model's own table holds it to issue 13's bars, the same ones as the summary above
    assert result["targets"]["e2e_steady_vs_original_loop"]["target"] == checks["e2e_vs_original_loop"]["target"]
    assert result["targets"]["e2e_steady_vs_best_model_only"]["target"] == checks["e2e_vs_ort_flush_model_only"]["target"] == 0.7
    assert ">= 0.7x" in (out / "latest.md").read_text() and ">= 0.85x" not in (out / "latest.md").read_text()
    assert result["stages"]["decode_ms_per_row"] > 0
    assert (out / "latest.png").stat().st_size > 10_000
    assert "end to end vs original loop" in (out / "latest.md").read_text()

    scale = json.loads((out / "scale_latest.json").read_text())["scale"]
    verification = scale["verification"]
    assert verification["ok"], verification["problems"]
    assert verification["rows_in"] == 400 == verification["feature_rows"] + verification["error_rows"]
    assert verification["per_reason_counts_match"] and verification["every_error_row_holds_its_original_data"]
    assert {"bad_csv_record", "empty_cell", "size_mismatch"} <= set(verification["errors_per_reason"])
    assert scale["peak_tree_rss_mb"] > 50
    assert (out / "scale_latest.png").stat().st_size > 5_000


def test_steady_rate_skips_the_first_batch():
    # three batches of 4 rows leaving the model at t = 10, 11, 12 s
    stamps = [t + i * 1e-5 for t in (10.0, 11.0, 12.0) for i in range(4)]
    assert rates.batches_of(stamps) == [4, 4, 4]
    rate = rates.steady_rate(stamps)
    assert rate["steady_rows_per_s"] == pytest.approx(8 / 2.0, rel=1e-3)
    assert rates.steady_rate(stamps[:4])["steady_rows_per_s"] is None


def test_scale_plan_keeps_broken_records_clear_of_multiline_cells():
    kinds, planned = tables.plan_scale_rows(20_000, 0.1, 1, 0, shards=4)
    assert len(kinds) == 20_000
    assert planned["bad_rows"] == sum(1 for kind, _ in kinds if kind not in ("good", "column"))
    assert planned["broken_csv_records"] == 10 and planned["widening_values"] == 10
    assert 1_900 <= planned["bad_rows"] <= 2_100
    for index, (kind, _) in enumerate(kinds):
        if kind == "broken":
            following = kinds[index + 1 : index + tables.BROKEN_LOOKAHEAD]
            assert not any(k == "broken" or (k == "cell" and tables.newlines(str(c.cell))) for k, c in following)
        if kind == "column":
            assert index % 5_000 >= tables.SCHEMA_SAMPLE  # every file's type sample stays clean
    used = {payload.name for kind, payload in kinds if kind == "cell"}
    assert len(used) == planned["bad_cell_kinds_used"] - 1  # the 50 MB cell is left out (0 copies)


def test_fallbacks_without_shared_material(tmp_path):
    rows, source = tables.seed_rows(None)
    assert len(rows) == 198 and "synthetic" in source
    assert all(isinstance(cell, str) and cell.startswith("{'width'") for *_, cell in rows)
    path, source = checkpoints.bench_weights(None, "osnet_ibn_x1_0", None, tmp_path)
    assert Path(path).is_file() and "random" in source
    from model import load_osnet

    assert load_osnet(path).arch == "osnet_ibn_x1_0"


def test_paired_ratios_and_the_baseline_comparison():
    assert rates.paired([2.0, 6.0], [1.0, 2.0])["median"] == pytest.approx(2.5)
    compared = baseline.compare([10.0, 12.0, None], [5.0, 8.0, 4.0])
    assert compared["ratio_new_over_baseline"] == pytest.approx(11.0 / 5.0)
    assert compared["paired"]["values"] == [2.0, 1.5]  # only the repeats both trees measured
    assert baseline.compare([], [1.0])["ratio_new_over_baseline"] is None


def test_baseline_checkout_is_the_revision_and_goes_away():
    with baseline.checkout("HEAD") as tree:
        assert tree["commit"] == baseline.resolve("HEAD") and len(tree["commit"]) == 40
        assert (tree["path"] / "model" / "__init__.py").is_file() and (tree["path"] / "bench" / "child.py").is_file()
        assert not (tree["path"] / ".git").exists()
    assert not tree["path"].exists()
    with pytest.raises(ValueError, match="not a commit"):
        baseline.resolve("no-such-revision-anywhere")


@pytest.mark.slow  # a minute: run with -m slow
def test_tiny_benchmark_against_a_baseline_checkout(tmp_path):
    out = tmp_path / "results"
    before = set(glob.glob(str(Path(tempfile.gettempdir()) / "osnet-bench-baseline-*")))
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--baseline-rev", "HEAD", "--backends", "onnxruntime",
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads((out / "latest.json").read_text())["bench"]
    compared = result["baseline"]
    assert compared["commit"] == baseline.resolve("HEAD")
    # each child imported the product from the tree it was meant to run
    for run in result["runs"]["e2e"] + result["runs"]["model_onnxruntime"]:
        assert Path(run["result"]["imported_from"]["model"]).resolve().is_relative_to(REPO_ROOT)
    checkout = Path(compared["imported_from"]["baseline"]["model"])
    assert checkout.name == "__init__.py" and checkout.parts[-2] == "model"
    assert not checkout.is_relative_to(REPO_ROOT) and "osnet-bench-baseline-" in str(checkout)
    assert not checkout.exists()  # the temporary checkout is gone
    assert set(glob.glob(str(Path(tempfile.gettempdir()) / "osnet-bench-baseline-*"))) == before
    e2e = compared["e2e_steady_rows_per_s"]
    assert e2e["new"]["median"] > 0 and e2e["baseline"]["median"] > 0
    assert math.isfinite(e2e["ratio_new_over_baseline"]) and e2e["ratio_new_over_baseline"] > 0
    assert set(compared["model_only_img_per_s"]["onnxruntime"]) == {"1", "4"}
    assert "new / baseline" in (out / "latest.md").read_text()


@pytest.mark.slow  # a minute: run with -m slow
def test_variants_base_and_null_model(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "variants.py"), "base", "null:--batch_size=16", "--repeats", "1",
         "--rows", "100", "--arch", "osnet_x0_25", "--quiet-wait", "0", "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    record = json.loads((tmp_path / "variants_e2e.json").read_text())
    assert set(record["summary"]) == {"base", "null:--batch_size=16"}
    null = record["runs"]["null:--batch_size=16"][0]
    assert null["pipeline_args"] == ["--batch_size=16"] and null["counters"]["rows_encoded"] == 100
    assert all(s["median"] > 0 for s in record["summary"].values())


def test_standardize_variants_all_give_the_products_values(tmp_path, seed_table):
    """bench/standardize_variants.py checks each variant against standardize_batch before timing it."""
    out = tmp_path / "variants.json"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "standardize_variants.py"), "--repeats", "1",
         "--shared", str(seed_table.parents[2]), "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["crops"] == 198
    assert set(result["ms_per_crop"]) == {"decode_crop", "resize_batch", "standardize_batch", "contiguous_first",
                                          "lookup_per_channel", "onnx_runtime_one_crop"}
    assert result["ms_per_crop"]["standardize_batch"]["vs_standardize_batch"] == 1.0
    assert all(r["median"] > 0 for r in result["ms_per_crop"].values())
