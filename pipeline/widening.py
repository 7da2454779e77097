"""A CSV column widened by a value past the type sample: the run's Parquet shards in the widened schema.

Parquet shards are written while the job runs, in the types planned from the files' samples
(:mod:`transforms.row_schema`). A later value that does not fit its column widens the column
instead of costing its row: that row is held back (``beam-temp-held-RUN-*``, its values as read),
and at the job's end, before the manifest is written, this module

1. rewrites every features shard whose schema is not the widened one (batch by batch, memory
   bounded by a batch; each shard replaced whole through a temporary file), and
2. writes the held rows as features shards of their own (``features-RUN-widened-SSSSS-of-NNNNN``),
   in the widened schema, then deletes the held files.

Both steps are idempotent (a retried manifest step redoes nothing that is done). Every widening
is exact: a typed value's canonical text is the text the file holds (:func:`row_schema.widen`).
CSV output needs none of this: it writes every value as read.
"""
from __future__ import annotations

import json
import logging
import posixpath
from typing import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.row_schema import COLUMN_TYPES, conform_row, conform_to, widened_schema
from transforms.write import HELD_VALUES

_LOG = logging.getLogger("osnet-beam")
#: Rows per batch while a shard is rewritten.
BATCH_ROWS = 2048
REWRITING_PREFIX = "beam-temp-widening"


def final_schema(planned: pa.Schema, widened: Mapping[str, tuple[str, str]]) -> pa.Schema:
    """The planned features schema with every widened column's type."""
    return widened_schema(planned, {name: COLUMN_TYPES[kind] for name, (kind, _) in widened.items()})


def describe(planned: pa.Schema, widened: Mapping[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    """For the manifest and the log: each widened column's planned and final type, and an example."""
    schema = final_schema(planned, widened)
    return {
        name: {"planned": str(planned.field(name).type), "type": str(schema.field(name).type), "example": example}
        for name, (_, example) in sorted(widened.items())
    }


def _temporary(output_dir: str, run_id: str, name: str) -> str:
    return FileSystems.join(output_dir, f"{REWRITING_PREFIX}-{run_id}-{name}")


def _replace(temporary: str, path: str) -> None:
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary], [path])


def _write_batches(path: str, schema: pa.Schema, batches) -> None:
    with FileSystems.create(path) as stream:
        with pq.ParquetWriter(pa.PythonFile(stream, mode="w"), schema) as writer:
            for batch in batches:
                writer.write_batch(batch)


def _rewritten(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for field in schema:
        column = batch.column(batch.schema.get_field_index(field.name))
        if column.type != field.type:
            column = pa.array([conform_to(v, field.type) for v in column.to_pylist()], type=field.type)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def rewrite_shard(path: str, schema: pa.Schema, output_dir: str, run_id: str) -> bool:
    """The shard at ``path`` in ``schema`` (replaced through a temporary file); False if it was already."""
    with FileSystems.open(path) as stream:
        if pq.read_schema(pa.PythonFile(stream, mode="r")).equals(schema, check_metadata=False):
            return False
    temporary = _temporary(output_dir, run_id, posixpath.basename(path))
    with FileSystems.open(path) as stream:
        source = pq.ParquetFile(pa.PythonFile(stream, mode="r"))
        _write_batches(temporary, schema, (_rewritten(b, schema) for b in source.iter_batches(BATCH_ROWS)))
    _replace(temporary, path)
    return True


def _held_batches(path: str, schema: pa.Schema, column: str):
    with FileSystems.open(path) as stream:
        source = pq.ParquetFile(pa.PythonFile(stream, mode="r"))
        for batch in source.iter_batches(BATCH_ROWS):
            rows = []
            for values, features in zip(batch.column(HELD_VALUES).to_pylist(), batch.column(column).to_pylist()):
                row, still = conform_row(json.loads(values), schema, skip=column)
                if still:  # cannot happen: the schema is the join of every value's type
                    raise ValueError(f"held row still does not fit the widened columns {sorted(still)}")
                row[column] = features
                rows.append(row)
            yield pa.RecordBatch.from_pylist(rows, schema=schema)


def _rows(path: str) -> int:
    with FileSystems.open(path) as stream:
        return pq.read_metadata(pa.PythonFile(stream, mode="r")).num_rows


def widen_parquet_run(
    feature_paths: Sequence[str], held_paths: Sequence[str], schema: pa.Schema, column: str,
    output_dir: str, run_id: str, features_prefix: str,
) -> list[str]:
    """Steps 1 and 2 of the module's docstring; returns the run's features shard paths. A held
    file without rows (the usual case: nothing widened) is only deleted."""
    rewritten = sum(rewrite_shard(path, schema, output_dir, run_id) for path in feature_paths)
    paths = list(feature_paths)
    held = sorted(held_paths)
    for index, path in enumerate(held):
        target = f"{features_prefix}-widened-{index:05d}-of-{len(held):05d}.parquet"
        if FileSystems.exists(path):
            if _rows(path):
                temporary = _temporary(output_dir, run_id, posixpath.basename(target))
                _write_batches(temporary, schema, _held_batches(path, schema, column))
                _replace(temporary, target)
            FileSystems.delete([path])
        if FileSystems.exists(target):
            paths.append(target)
    if rewritten or len(paths) > len(feature_paths):
        _LOG.info("widened columns: %d features shards rewritten, %d shards of held rows written",
                  rewritten, len(paths) - len(feature_paths))
    return paths
