"""Keeps bench/gpu_benchmark.py runnable where no GPU is: its tiny mode on CPU, and its helpers.

The GPU figures in bench/README.md come from this script on a lent H200; CI has no GPU, so this
runs every section (parity, model only, end to end with several SDK processes and a shared
model) with ``--tiny --device cpu`` in about a minute, and checks what it measured.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_benchmark
from bench.rates import central_rate

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "gpu_benchmark.py"


@pytest.mark.slow  # minutes: run with -m slow (README, "Tests")
def test_tiny_gpu_benchmark_runs_every_section_on_cpu(shared_dir, tmp_path):
    out = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out), "--shared", str(shared_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=400,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads((out / "gpu_latest.json").read_text())
    assert "failures" not in result

    parity = result["parity"]
    assert parity["device_normalisation_bit_identical"] is True
    assert set(parity["checkpoints"]) == {"osnet_x0_25_msmt17", "osnet_x0_25_market1501", "osnet_ibn_x1_0_random"}
    msmt = parity["checkpoints"]["osnet_x0_25_msmt17"]["fp32"]
    assert msmt["cosine_vs_torchreid_min"] >= 0.99999 and msmt["rank1"] == pytest.approx(0.606, abs=0.005)

    per_path = result["model"]["img_per_s"]["fp32"]
    for path in ("pixels", "float32", "resident"):
        assert set(per_path[path]) == {"4", "8"} and all(s["median"] > 0 for s in per_path[path].values())

    runs = result["e2e"]["runs"]
    assert set(runs) == {"1", "2", "2s@4"}
    for label, run in runs.items():
        assert run["all_rows_encoded"], label
    assert runs["2"]["processes"] == 2 and not runs["2"]["shared_model"]
    assert runs["2s@4"]["shared_model"] and runs["2s@4"]["batch_size"] == 4
    assert "pipeline end to end" in (out / "gpu_latest.md").read_text()


def test_central_rate_leaves_out_start_up_and_tail():
    # 20 batches of 10 rows, one a second, then a straggler of 4 rows 20 s later
    stamps = [t + i * 1e-5 for t in range(20) for i in range(10)] + [40 + i * 1e-5 for i in range(4)]
    rate = central_rate(stamps)["central_rows_per_s"]
    assert rate == pytest.approx(10.0, rel=0.05)  # rows of the middle, not diluted by the straggler
    assert central_rate(stamps[:15])["central_rows_per_s"] is None  # too few batches


def test_e2e_configurations_parse():
    assert gpu_benchmark.parse_config("16") == (16, False, None)
    assert gpu_benchmark.parse_config("8s") == (8, True, None)
    assert gpu_benchmark.parse_config("16s@512") == (16, True, 512)
    assert gpu_benchmark.parse_config("4@64") == (4, False, 64)
    with pytest.raises(Exception, match="K\\[s\\]\\[@B\\]"):
        gpu_benchmark.parse_config("s16")
