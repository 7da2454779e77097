"""The Parquet source against pyarrow's own read: every row once, in its type, for any layout.

Random tables (several Arrow types, nulls), random row-group layouts (including empty groups)
and random split points: the ranges planned by ``initial_splits``, ranges cut anywhere, and
ranges cut while being read (a runner's dynamic split) each read every row exactly once, with
the values and types ``pq.read_table`` gives.
"""
from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms import parquet_source
from transforms.parquet_source import (
    ParquetInputError,
    _ReadRowRange,
    initial_splits,
    inspect_parquet,
    iter_batches,
)

COLUMN_TYPES = {
    "i32": (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    "i64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "f64": (pa.float64(), st.floats(allow_nan=False)),
    "text": (pa.string(), st.text(max_size=20)),
    "large_text": (pa.large_string(), st.text(max_size=5)),
    "blob": (pa.binary(), st.binary(max_size=10)),
    "flag": (pa.bool_(), st.booleans()),
    "when": (pa.timestamp("us"), st.datetimes(datetime.datetime(1900, 1, 1), datetime.datetime(2200, 1, 1))),
    "ints": (pa.list_(pa.int16()), st.lists(st.integers(-(2**15), 2**15 - 1), max_size=3)),
}


@st.composite
def tables(draw) -> tuple[pa.Table, list[int]]:
    """A table with the image column and random others, and its row-group sizes."""
    names = draw(st.lists(st.sampled_from(sorted(COLUMN_TYPES)), unique=True, max_size=4))
    groups = draw(st.lists(st.integers(0, 12), min_size=1, max_size=5))
    rows = sum(groups)
    columns = {"feature_vector": pa.array([f"cell-{i}" for i in range(rows)])}
    for name in names:
        arrow_type, values = COLUMN_TYPES[name]
        cells = draw(st.lists(st.one_of(st.none(), values), min_size=rows, max_size=rows))
        columns[name] = pa.array(cells, arrow_type)
    return pa.table(columns), groups


def write_layout(table: pa.Table, groups: list[int], path: Path) -> None:
    """``table`` with exactly the row groups ``groups`` (empty ones included)."""
    with pq.ParquetWriter(path, table.schema) as writer:
        start = 0
        for rows in groups:
            writer.write_table(table.slice(start, rows), row_group_size=max(rows, 1))
            start += rows


def read_range(shard, schema, start, stop, batch_rows=None) -> list[dict]:
    return [row for _, batch in iter_batches(shard, schema, start, stop, batch_rows) for row in batch.to_pylist()]


def _plan(path: Path):
    plan = inspect_parquet([str(path)], "feature_vector", str(path.parent) + "/")
    return plan.schema, plan.shards[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(), st.lists(st.integers(0, 70), max_size=6), st.integers(1, 5))
def test_any_ranges_read_every_row_once_with_pyarrows_types(layout, cut_points, batch_rows):
    table, groups = layout
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.parquet"
        write_layout(table, groups, path)
        schema, shard = _plan(path)
        expected = pq.read_table(path)
        assert shard.num_rows == sum(groups)
        assert schema == expected.schema

        planned = initial_splits(shard, 0, shard.num_rows)
        assert [r.start for r in planned[1:]] == [r.stop for r in planned[:-1]]
        assert not planned or (planned[0].start, planned[-1].stop) == (0, shard.num_rows)
        cuts = sorted({0, shard.num_rows, *(c for c in cut_points if c <= shard.num_rows)})
        for ranges in (planned, [OffsetRange(a, b) for a, b in zip(cuts, cuts[1:])]):
            rows = [row for r in ranges for row in read_range(shard, schema, r.start, r.stop, batch_rows)]
            assert rows == expected.to_pylist()
        batches = [b for _, b in iter_batches(shard, schema, 0, shard.num_rows, batch_rows)]
        if batches:
            assert pa.Table.from_batches(batches).equals(expected)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=4), st.data())
def test_a_range_split_while_it_is_read_loses_and_repeats_nothing(groups, data):
    """What a runner's dynamic split does: cut the unread rest of a range at any point."""
    rows = sum(groups)
    table = pa.table({"feature_vector": [f"c{i}" for i in range(rows)], "n": pa.array(range(rows), pa.int32())})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.parquet"
        write_layout(table, groups, path)
        schema, shard = _plan(path)
        read, pending = [], [OffsetRange(0, rows)]
        while pending:
            tracker = OffsetRestrictionTracker(pending.pop())
            split_after = data.draw(st.integers(0, rows), label="rows before the split")
            fraction = data.draw(st.floats(0, 1), label="fraction of the rest")
            for count, row in enumerate(_ReadRowRange(schema).process(shard, tracker)):
                read.append(row["n"])
                if count == split_after:
                    split = tracker.try_split(fraction)
                    if split:
                        pending.append(split[1])
            tracker.check_done()
        assert sorted(read) == list(range(rows))


def test_large_row_groups_are_sliced_into_bounded_ranges():
    shard = parquet_source.ParquetShard("f", (10_000, 3, 0, 700), (1, 1, 1, 1))
    ranges = initial_splits(shard, 0, shard.num_rows)
    first_group = [r for r in ranges if r.stop <= 10_000]
    assert len(first_group) == parquet_source.MAX_SLICES_PER_ROW_GROUP
    assert [r.size() for r in ranges if r.start >= 10_003] == [233, 233, 234]
    assert sum(r.size() for r in ranges) == shard.num_rows


def test_beam_reads_shards_of_several_layouts_as_pyarrow_does(tmp_path):
    table = pa.table({"feature_vector": [f"c{i}" for i in range(700)], "n": pa.array(range(700), pa.int64())})
    write_layout(table.slice(0, 600), [600], tmp_path / "a.parquet")  # one group, sliced
    write_layout(table.slice(600), [30, 0, 70], tmp_path / "b.parquet")
    files = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    plan = inspect_parquet(files, "feature_vector", str(tmp_path) + "/")
    with TestPipeline() as p:
        rows = p | parquet_source.ReadParquetRows(plan)
        assert_that(rows, equal_to(table.to_pylist()))


def test_bounded_batches_whatever_the_row_group(tmp_path):
    shard = parquet_source.ParquetShard("f", (1_000_000,), (30_000 * 1_000_000,))
    assert shard.batch_rows() * 30_000 <= parquet_source.BATCH_BYTES
    assert parquet_source.ParquetShard("f", (10,), (10,)).batch_rows() == parquet_source.MAX_BATCH_ROWS


@pytest.mark.parametrize(
    "first, second, unified",
    [
        ({"id": pa.int32()}, {"id": pa.int64()}, {"id": pa.int64()}),
        ({"id": pa.uint16()}, {"id": pa.int32()}, {"id": pa.int32()}),
        ({"x": pa.float32()}, {"x": pa.float64()}, {"x": pa.float64()}),
        ({"s": pa.string()}, {"s": pa.large_string()}, {"s": pa.large_string()}),
        ({"id": pa.int64()}, {"id": pa.int64(), "extra": pa.string()}, {"id": pa.int64(), "extra": pa.string()}),
        ({"id": pa.null()}, {"id": pa.int64()}, {"id": pa.int64()}),
    ],
)
def test_schemas_unify_where_no_value_changes(first, second, unified):
    a, b = (pa.schema({"feature_vector": pa.string(), **s}) for s in (first, second))
    schema, notes = parquet_source.unify(["a.parquet", "b.parquet"], [a, b])
    assert schema == pa.schema({"feature_vector": pa.string(), **unified})
    assert notes  # each unification is said


@pytest.mark.parametrize(
    "first, second",
    [(pa.int64(), pa.string()), (pa.int64(), pa.float64()), (pa.uint64(), pa.int64()), (pa.float64(), pa.int32())],
)
def test_schemas_that_would_change_values_are_refused_naming_both_files(first, second):
    a, b = (pa.schema({"feature_vector": pa.string(), "id": t}) for t in (first, second))
    with pytest.raises(ParquetInputError) as error:
        parquet_source.unify(["dir/a.parquet", "dir/b.parquet"], [a, b])
    message = str(error.value)
    assert "'id'" in message and "dir/a.parquet" in message and "dir/b.parquet" in message


def test_hive_partition_types_follow_pyarrow_dataset(tmp_path):
    import pyarrow.dataset as ds

    for year, cam in [("2024", "a"), ("2025", "b%20c"), ("2025", "__HIVE_DEFAULT_PARTITION__")]:
        folder = tmp_path / f"year={year}" / f"cam={cam}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"feature_vector": ["x", "y"], "n": [1, 2]}), folder / "p.parquet")
    files = sorted(str(p) for p in tmp_path.rglob("*.parquet"))
    plan = inspect_parquet(files, "feature_vector", str(tmp_path) + "/")
    expected = ds.dataset(str(tmp_path), format="parquet", partitioning="hive")
    assert plan.schema == expected.schema
    rows = [r for s in plan.shards for r in read_range(s, plan.schema, 0, s.num_rows)]
    key = lambda r: (r["year"], str(r["cam"]), r["n"])  # noqa: E731
    assert sorted(rows, key=key) == sorted(expected.to_table().to_pylist(), key=key)


@pytest.mark.parametrize("output_column", ["feature_vector", "embedding"])
def test_features_schema_keeps_pandas_index_true_to_the_output(tmp_path, output_column):
    import numpy as np
    import pandas as pd

    from transforms.write import features_schema

    frame = pd.DataFrame({"feature_vector": ["a", "b"], "camera": ["1", "2"]},
                         index=pd.Index(["x", "y"], name="crop_id"))
    schema = pa.Schema.from_pandas(frame)
    out_schema = features_schema(schema, "feature_vector", output_column)
    vectors = [np.ones(512, np.float32).tolist()] * 2
    table = pa.table({output_column: vectors, "camera": ["1", "2"], "crop_id": ["x", "y"]})
    pq.write_table(table.select(out_schema.names).cast(out_schema), tmp_path / "f.parquet")
    back = pd.read_parquet(tmp_path / "f.parquet")
    pd.testing.assert_index_equal(back.index, frame.index)
    assert list(back.columns) == [output_column, "camera"]
