"""pipeline.widening on its own: a widened CSV column's Parquet shards rewritten in the widened
schema, the held rows written as features, idempotently (the manifest step may be retried)."""
from __future__ import annotations

import decimal
import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import widening
from transforms.row_schema import WIDE_INT
from transforms.write import HELD_VALUES, held_schema

PLANNED = pa.schema([("frame", pa.int64()), ("track", pa.int64()), ("big", pa.int64()),
                     ("feature_vector", pa.list_(pa.float32()))])
WIDENED = {"track": ("string", "n/a"), "big": (str(WIDE_INT), str(2**70))}


def _layout(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    prefix = str(out / "features-RUN")
    shards = []
    for index in range(2):
        path = f"{prefix}-{index:05d}-of-00002.parquet"
        pq.write_table(pa.table({"frame": [index * 10, index * 10 + 1], "track": [7, -3], "big": [1, 2],
                                 "feature_vector": [[0.5, 1.0], [0.25, 2.0]]}, schema=PLANNED), path)
        shards.append(path)
    held = [str(out / "beam-temp-held-RUN-00000-of-00002.parquet"), str(out / "beam-temp-held-RUN-00001-of-00002.parquet")]
    rows = [{"frame": 99, "track": "n/a", "big": 2**70}, {"frame": 98, "track": 5, "big": 2**70}]
    pq.write_table(pa.table({HELD_VALUES: [json.dumps(r) for r in rows], "feature_vector": [[1.5, 3.0], [2.5, 4.0]]},
                            schema=held_schema("feature_vector")), held[0])
    pq.write_table(held_schema("feature_vector").empty_table(), held[1])  # a bundle that held nothing
    return out, prefix, shards, held


def _read(paths):
    return pa.concat_tables([pq.read_table(p) for p in paths]).sort_by("frame").to_pylist()


def test_shards_are_rewritten_exactly_and_the_held_rows_become_a_shard(tmp_path):
    out, prefix, shards, held = _layout(tmp_path)
    schema = widening.final_schema(PLANNED, WIDENED)
    assert schema.field("track").type == pa.string() and schema.field("big").type == WIDE_INT
    paths = widening.widen_parquet_run(shards, held, schema, "feature_vector", str(out), "RUN", prefix)
    assert paths == shards + [f"{prefix}-widened-00000-of-00002.parquet"]
    assert {pq.read_schema(p) .remove_metadata() for p in paths} == {pq.read_schema(paths[0]).remove_metadata()}
    rows = _read(paths)
    assert [r["track"] for r in rows] == ["7", "-3", "7", "-3", "5", "n/a"]
    assert [r["big"] for r in rows][-2:] == [decimal.Decimal(2**70)] * 2 and rows[0]["big"] == decimal.Decimal(1)
    assert rows[-1]["feature_vector"] == [1.5, 3.0]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.rsplit("/", 1)[1] for p in paths)  # no temporaries

    again = widening.widen_parquet_run(shards, held, schema, "feature_vector", str(out), "RUN", prefix)
    assert again == paths and _read(again) == rows  # a retried step: nothing twice


def test_a_retry_after_the_held_rows_were_written_but_not_yet_deleted_writes_them_once(tmp_path):
    out, prefix, shards, held = _layout(tmp_path)
    schema = widening.final_schema(PLANNED, WIDENED)
    kept = (out / "held-copy.parquet")
    kept.write_bytes(open(held[0], "rb").read())
    paths = widening.widen_parquet_run(shards, held, schema, "feature_vector", str(out), "RUN", prefix)
    kept.rename(held[0])  # as if the step died between writing the shard and deleting its held file
    again = widening.widen_parquet_run(shards, held, schema, "feature_vector", str(out), "RUN", prefix)
    assert again == paths and len(_read(again)) == 6


def test_describe_names_the_planned_and_final_types_with_an_example():
    assert widening.describe(PLANNED, WIDENED) == {
        "big": {"planned": "int64", "type": "decimal128(38, 0)", "example": str(2**70)},
        "track": {"planned": "int64", "type": "string", "example": "n/a"},
    }


def test_widenings_of_one_column_combine_to_the_widest_with_its_example():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.write import WidenColumns

    values = [("big", (str(WIDE_INT), "1180591620717411303424")), ("big", ("string", "n/a")),
              ("big", (str(WIDE_INT), "2361183241434822606848")), ("track", ("string", "x"))]
    with TestPipeline() as p:
        combined = p | beam.Create(values) | beam.CombinePerKey(WidenColumns())
        assert_that(combined, equal_to([("big", ("string", "n/a")), ("track", ("string", "x"))]))
