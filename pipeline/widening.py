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


def _held_rows(batch: pa.RecordBatch, schema: pa.Schema, column: str) -> pa.RecordBatch:
    rows = []
    for values, features in zip(batch.column(HELD_VALUES).to_pylist(), batch.column(column).to_pylist()):
        row, still = conform_row(json.loads(values), schema, skip=column)
        if still:  # cannot happen: the schema is the join of every value's type
            raise ValueError(f"held row still does not fit the widened columns {sorted(still)}")
        row[column] = features
        rows.append(row)
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def _convert(path: str, target: str, schema: pa.Schema, convert, output_dir: str, run_id: str,
             skip_empty: bool = False) -> bool:
    """``target`` (which may be ``path``) written from ``path``'s batches through ``convert``, in
    ``schema``; False, writing nothing, when ``path`` already is in ``schema`` (or, with
    ``skip_empty``, holds no rows). Written to a temporary file, then renamed over ``target``: no
    moment without it."""
    temporary = _temporary(output_dir, run_id, posixpath.basename(target))
    with FileSystems.open(path) as stream:
        source = pq.ParquetFile(pa.PythonFile(stream, mode="r"))
        if source.schema_arrow.equals(schema, check_metadata=False) or (skip_empty and not source.metadata.num_rows):
            return False
        _write_batches(temporary, schema, (convert(b) for b in source.iter_batches(BATCH_ROWS)))
    FileSystems.rename([temporary], [target])  # replaces target (local: os.rename; object stores: copy)
    return True


def rewrite_shard(path: str, schema: pa.Schema, output_dir: str, run_id: str) -> bool:
    """The shard at ``path`` in ``schema`` (an empty one too: every shard has the one schema);
    False if it was already."""
    return _convert(path, path, schema, lambda b: _rewritten(b, schema), output_dir, run_id)


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
            _convert(path, target, schema, lambda b: _held_rows(b, schema, column), output_dir, run_id,
                     skip_empty=True)
            FileSystems.delete([path])
        if FileSystems.exists(target):
            paths.append(target)
    if rewritten or len(paths) > len(feature_paths):
        _LOG.info("widened columns: %d features shards rewritten, %d shards of held rows written",
                  rewritten, len(paths) - len(feature_paths))
    return paths
