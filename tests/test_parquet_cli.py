"""Parquet inputs as users have them, through ``python -m pipeline`` in a subprocess.

One big row group spread over two SDK processes; shards whose schemas differ (unified, or refused
with exit 2 naming both files and the column); two fields with one name; pandas' index; Hive
partition directories. Rows are read back with README's recipe (pyarrow over the shards) and
compared with pyarrow's and pandas' own reads of the input.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline import run
from tests.pipeline_helpers import COLUMNS, read_errors, read_seed_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
READ_LINE = re.compile(r"process (\d+) read (\d+) rows of (\S+) \(rows")


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def features_table(output: Path) -> pa.Table:
    """README's recipe."""
    return pq.read_table(sorted(glob.glob(str(output / "features-*.parquet"))))


@pytest.fixture(scope="module")
def seed(seed_table) -> pa.Table:
    rows = read_seed_rows(seed_table)
    return pa.table({c: [r[c] for r in rows] for c in COLUMNS})


@pytest.fixture(scope="module")
def one_process_features(seed, tmp_path_factory) -> dict[str, np.ndarray]:
    """Features of every distinct crop from a one-process run, by file name."""
    folder = tmp_path_factory.mktemp("one-process")
    pq.write_table(seed, folder / "seed.parquet")
    run(["--input", str(folder / "seed.parquet"), "--output", str(folder / "out")])
    table = features_table(folder / "out")
    return {f: np.asarray(v, np.float32) for f, v in zip(table["file"].to_pylist(), table["feature_vector"].to_pylist())}


# slow: a 1,024-row job on two processes; row-range splits of one row group are checked in-process
# by test_parquet_source.py and multi-process rows by test_multiprocess.py in the default suite
@pytest.mark.slow
def test_one_row_group_spreads_over_two_processes_with_one_process_features(
    seed, one_process_features, tmp_path
):
    rows = 1024
    big = pa.concat_tables([seed] * (rows // seed.num_rows + 1)).slice(0, rows)
    big = big.set_column(0, "frame", pa.array(range(rows), pa.int64()))
    pq.write_table(big, tmp_path / "big.parquet", row_group_size=rows)  # pyarrow's default layout
    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_row_groups == 1

    done = cli("--input", str(tmp_path / "big.parquet"), "--output", str(tmp_path / "out"),
               "--direct_num_workers=2", "--direct_running_mode=multi_processing", "--log_level", "info")
    assert done.returncode == 0, done.stderr[-3000:]
    # each process logs the rows it read (at INFO: --log_level info shows it); decode and encode run fused after the read, in the
    # same process (nothing is shuffled in between), so these are the rows each process encoded
    per_process = Counter()
    for pid, count, _path in READ_LINE.findall(done.stderr):
        per_process[pid] += int(count)
    assert len(per_process) == 2, per_process
    assert sum(per_process.values()) == rows
    assert all(0.3 <= n / rows <= 0.7 for n in per_process.values()), per_process
    assert f"encoded={rows} errors=0" in done.stdout

    out = features_table(tmp_path / "out")
    assert out.schema.field("frame").type == pa.int64()
    assert sorted(out["frame"].to_pylist()) == list(range(rows))
    by_frame = {r["frame"]: r for r in big.to_pylist()}
    for row in out.to_pylist():
        want = by_frame[row["frame"]]
        assert (row["track_id"], row["camera"], row["file"]) == (want["track_id"], want["camera"], want["file"])
        np.testing.assert_allclose(np.asarray(row["feature_vector"], np.float32),
                                   one_process_features[row["file"]], rtol=1e-6, atol=1e-5)


def _shard(seed: pa.Table, path: Path, start: int, rows: int, **columns) -> pa.Table:
    table = seed.slice(start, rows)
    for name, array in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, array)
        else:
            table = table.append_column(name, array)
    pq.write_table(table, path)
    return table


# slow: test_parquet_source.py::test_schemas_unify_where_no_value_changes unifies (and says) in-process
@pytest.mark.slow
def test_shards_with_an_extra_column_and_a_wider_int_are_unified_and_said(seed, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    a = _shard(seed, inputs / "a.parquet", 0, 6, track_id=pa.array(range(6), pa.int32()))
    b = _shard(seed, inputs / "b.parquet", 6, 6, track_id=pa.array([2**40 + i for i in range(6)], pa.int64()),
               note=pa.array([f"n{i}" for i in range(6)]))
    done = cli("--input", str(inputs / "*.parquet"), "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'note'" in done.stderr and "a.parquet" in done.stderr and "null there" in done.stderr
    assert "'track_id'" in done.stderr and "int64" in done.stderr

    out = features_table(tmp_path / "out")
    assert out.schema.field("track_id").type == pa.int64()
    assert out.schema.field("note").type == pa.string()
    got = {r["file"]: (r["track_id"], r["note"]) for r in out.to_pylist()}
    want = {r["file"]: (r["track_id"], None) for r in a.to_pylist()}
    want.update({r["file"]: (r["track_id"], r["note"]) for r in b.to_pylist()})
    assert got == want


# the float case only in the full run: every refused pair is checked in-process by test_parquet_source.py
@pytest.mark.parametrize("other_type, values", [
    (pa.string(), ["x"] * 4), pytest.param(pa.float64(), [0.5] * 4, marks=pytest.mark.slow),
])
def test_shards_whose_types_cannot_be_unified_exit_2_naming_both_files_and_the_column(
    seed, tmp_path, other_type, values
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _shard(seed, inputs / "first.parquet", 0, 4)
    _shard(seed, inputs / "second.parquet", 4, 4, track_id=pa.array(values, other_type))
    done = cli("--input", str(inputs / "*.parquet"), "--output", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-3000:]
    message = done.stderr.splitlines()[-1]
    assert "first.parquet" in message and "second.parquet" in message and "'track_id'" in message, message
    assert not (tmp_path / "out").exists()


def test_two_columns_with_one_name_exit_2_naming_the_file_and_column(seed, tmp_path):
    table = pa.Table.from_arrays(
        [seed["file"].slice(0, 3), seed["feature_vector"].slice(0, 3), pa.array([1, 2, 3])],
        names=["file", "feature_vector", "file"],
    )
    pq.write_table(table, tmp_path / "dup.parquet")
    done = cli("--input", str(tmp_path / "dup.parquet"), "--output", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-3000:]
    message = done.stderr.splitlines()[-1]
    assert "dup.parquet" in message and "'file'" in message, message


# a named index only in the full run: test_parquet_source.py checks it in-process
@pytest.mark.parametrize("index", [pytest.param("named", marks=pytest.mark.slow), "multi", "range"])
def test_pandas_index_comes_back_as_pandas_wrote_it(seed, tmp_path, index):
    frame = seed.slice(0, 8).to_pandas()
    if index == "named":
        frame.index = pd.Index([f"crop-{i}" for i in range(8)], name="crop_id")
    elif index == "multi":
        frame = frame.set_index(["camera", "frame"])
    frame.to_parquet(tmp_path / "in.parquet")  # pandas' defaults
    done = cli("--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    back = features_table(tmp_path / "out").to_pandas()
    assert len(back) == 8
    expected = pd.read_parquet(tmp_path / "in.parquet")
    if index == "range":  # row positions are no index to keep: the output's rows are numbered
        pd.testing.assert_index_equal(back.index, pd.RangeIndex(8))
        back = back.sort_values("file").reset_index(drop=True)
        expected = expected.sort_values("file").reset_index(drop=True)
    else:
        back = back.sort_index()
        pd.testing.assert_index_equal(back.index, expected.sort_index().index)
        expected = expected.sort_index()
    assert list(back.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(back.drop(columns="feature_vector"), expected.drop(columns="feature_vector"))


# slow: test_parquet_source.py::test_hive_partition_types_follow_pyarrow_dataset reads the same in-process
@pytest.mark.slow
def test_hive_partition_columns_are_kept_with_pyarrows_types(seed, tmp_path):
    root = tmp_path / "table"
    start = 0
    for year, camera in [(2024, "north"), (2024, "south"), (2025, "north")]:
        folder = root / f"year={year}" / f"site={camera}"
        folder.mkdir(parents=True)
        pq.write_table(seed.slice(start, 5), folder / "part-0.parquet")
        start += 5
    done = cli("--input", str(root / "*" / "*" / "*.parquet"), "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]

    out = features_table(tmp_path / "out")
    expected = ds.dataset(str(root), format="parquet", partitioning="hive").to_table()
    assert out.schema.field("year").type == expected.schema.field("year").type == pa.int32()
    assert out.schema.field("site").type == pa.string()
    got = sorted((r["file"], r["year"], r["site"]) for r in out.to_pylist())
    assert got == sorted((r["file"], r["year"], r["site"]) for r in expected.to_pylist())
    assert not read_errors(tmp_path / "out")
