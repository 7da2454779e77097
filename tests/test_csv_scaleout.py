"""One big CSV file spreads over every SDK process, from the CLI, with the same results.

``python -m pipeline`` in a subprocess, as a user runs it, on one CSV file of 1,000+ rows:
with ``--direct_num_workers=2 --direct_running_mode=multi_processing`` each process parses and
encodes 30-70% of the rows (the plain file by byte ranges, the gzip file read whole and its
records redistributed), and the features, counts and error rows equal the one-process run's.
Per-process counts come from the line each CSV parse step logs when it ends, which the DirectRunner
relays from its SDK worker processes.
"""
from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline_helpers import COLUMNS, read_errors, read_parquet_features, read_seed_rows, write_csv

REPO_ROOT = Path(__file__).resolve().parents[1]
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
N_ROWS = 1_000
BAD_LINE_AFTER = 700  # a record with too few fields, deep inside the file (not in the first range)
# slow: three 1,000-row CLI jobs, two of them on two SDK processes. The default suite keeps the same
# facts cheaper: byte-range splits and gzip redistribution in test_csv_split.py, multi-process rows
# in test_multiprocess.py.
pytestmark = pytest.mark.slow
PARSED = re.compile(r"csv records parsed by process (\d+): (\d+)")
SUMMARY = re.compile(r"rows_read=(\d+) decoded=(\d+) encoded=(\d+) errors=(\d+)")


@pytest.fixture(scope="module")
def big_csv(seed_table, tmp_path_factory) -> dict[str, Path]:
    """1,000 real rows (the seed table replicated, frames unique), one too-short record and one
    empty image cell; plain and gzip."""
    seed = read_seed_rows(seed_table)
    rows = [[i, *[seed[i % len(seed)][c] for c in COLUMNS[1:]]] for i in range(N_ROWS)]
    rows[123][4] = ""  # empty_cell
    folder = tmp_path_factory.mktemp("big-csv")
    plain = folder / "big.csv"
    write_csv(plain, rows, raw_lines={BAD_LINE_AFTER: '1,2,"too few fields"\n'})
    zipped = folder / "big.csv.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    return {"plain": plain, "gzip": zipped}


def _run_cli(input_path: Path, output: Path, extra: list[str]) -> tuple[dict[int, int], tuple[int, ...], str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", str(input_path), "--output", str(output), "--threads=1",
         "--log_level", "info", *extra],  # each process's "csv records parsed" line is at INFO
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    per_process: dict[int, int] = {}
    for pid, count in PARSED.findall(done.stderr):
        per_process[int(pid)] = per_process.get(int(pid), 0) + int(count)
    summary = SUMMARY.search(done.stdout)
    assert summary, done.stdout
    return per_process, tuple(int(x) for x in summary.groups()), done.stderr


@pytest.fixture(scope="module")
def one_process(big_csv, tmp_path_factory):
    output = tmp_path_factory.mktemp("one") / "out"
    return output, _run_cli(big_csv["plain"], output, [])


def _features(output: Path) -> dict[int, np.ndarray]:
    table = read_parquet_features(output).to_pylist()
    assert len({r["frame"] for r in table}) == len(table)
    return {r["frame"]: np.asarray(r["feature_vector"], np.float32) for r in table}


def _errors(output: Path) -> list[tuple]:
    return sorted((e["reason"], e.get("line"), e.get("raw_line"), (e.get("row") or {}).get("frame")) for e in read_errors(output))


@pytest.mark.parametrize("kind", ["plain", "gzip"])
def test_one_csv_file_spreads_over_two_processes_with_the_same_results(big_csv, one_process, tmp_path, kind):
    output = tmp_path / "out"
    per_process, counts, stderr = _run_cli(big_csv[kind], output, MULTI_PROCESS)
    base_output, (base_per_process, base_counts, _) = one_process

    rows_read, decoded, encoded, errors = counts
    assert counts == base_counts
    assert (rows_read, encoded, errors) == (N_ROWS + 1, N_ROWS - 1, 2)  # in == features + errors
    # each of the two processes parsed (and, fused with parsing, decoded and encoded) 30-70%
    print(f"{kind}: records parsed per process {per_process}")
    assert len(per_process) == 2 and sum(per_process.values()) == N_ROWS + 1, per_process
    assert all(0.3 <= n / (N_ROWS + 1) <= 0.7 for n in per_process.values()), per_process
    assert len(base_per_process) == 1
    if kind == "gzip":
        assert "read whole by one worker" in stderr and "compressed (gzip)" in stderr

    features, base = _features(output), _features(base_output)
    assert sorted(features) == sorted(base) and len(features) == N_ROWS - 1
    for frame, vector in features.items():
        np.testing.assert_allclose(vector, base[frame], rtol=0, atol=1e-5)
    expected_errors = [
        ("bad_csv_record", BAD_LINE_AFTER + 3, '1,2,"too few fields"', None),  # header + 701 rows
        ("empty_cell", None, None, 123),
    ]
    assert _errors(output) == _errors(base_output) == expected_errors
