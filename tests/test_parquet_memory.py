"""Reading a single-row-group Parquet file: peak RSS does not grow with the row group.

Runs ``bench/parquet_memory.py`` (fresh processes, DirectRunner, rows counted and dropped) on a
pyarrow-default file of one row group and on one twice its size, beside Beam's
``ReadFromParquet``, which loads the whole row group: that reader's growth shows the test can
see the difference.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = 2000  # about 60 MiB, then 120 MiB, of real crops in one row group


# slow: four fresh DirectRunner processes; the bound it measures (batches of bounded bytes whatever
# the row group) is asserted in-process by test_parquet_source.py::test_bounded_batches_whatever_the_row_group
@pytest.mark.slow
def test_peak_rss_of_reading_one_row_group_stays_flat_while_beams_grows(seed_table, tmp_path):
    summary = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, "bench/parquet_memory.py", "--rows", str(ROWS), "--readers", "osnet,beam",
         "--seed", str(seed_table), "--json", str(summary)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(summary.read_text())["results"]
    peak = {(r["reader"], r["file_rows"]): r["peak_rss_mib"] for r in results}
    grown_mib = next(r["file_mib"] for r in results if r["file_rows"] == 2 * ROWS) - next(
        r["file_mib"] for r in results if r["file_rows"] == ROWS
    )
    assert all(r["rows"] == r["file_rows"] for r in results)
    # Beam's reader holds the row group: its peak grows with the file
    assert peak["beam", 2 * ROWS] - peak["beam", ROWS] > 0.5 * grown_mib, peak
    # ours streams small batches: twice the file, within 15% of the peak
    assert peak["osnet", 2 * ROWS] <= 1.15 * peak["osnet", ROWS], peak
    assert peak["osnet", 2 * ROWS] < peak["beam", 2 * ROWS] - grown_mib, peak
