"""Parquet input: every footer checked at planning, rows streamed in small batches, split by row range.

Planning (:func:`inspect_parquet`) reads each shard's footer once: its Arrow schema (two fields
with one name are refused), its row groups (rows and bytes) and, for Hive-style directories
(``year=2024/...``), its partition values. The shards' schemas are unified where no value can
change (a column missing from a shard is null there; int32 widens to int64, float32 to float64,
string to large_string, ...) and each unification is logged; any other difference stops the job
with :class:`ParquetInputError` naming both files and the column.

Reading (:class:`ReadParquetRows`) is a splittable DoFn whose restriction is a range of the file's
row positions. pandas and pyarrow put up to 1,048,576 rows in ONE row group, so row groups alone
cannot spread a file: the initial split cuts at every row group boundary and cuts large row groups
into row ranges of :data:`SLICE_ROWS` (at most :data:`MAX_SLICES_PER_ROW_GROUP`), and a runner that splits dynamically
(Dataflow) can cut any range further. pyarrow cannot seek to a row inside a row group (it has no
page-index row selection), so a range that starts inside a row group decodes and drops the rows
before it; that costs decoding, which is cheap beside inference, and bounds the initial slices.
Rows are read in batches of about :data:`BATCH_BYTES` through a buffered stream without
pre-buffering, so a worker's memory does not grow with the row group. Nothing but the ranges
crosses a shuffle: each range's rows are decoded and encoded in the process that reads them.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider

from transforms import USER_LOG, metrics

_LOG = logging.getLogger(__name__)

#: Target uncompressed bytes of one record batch read from a file (its rows, Arrow-decoded).
BATCH_BYTES = 4 << 20
#: Most rows in one record batch, whatever the row size.
MAX_BATCH_ROWS = 1024
#: Rows of one initial slice of a row group (the unit a worker takes), up to the cap below.
SLICE_ROWS = 256
#: Most initial slices of one row group: a slice that starts inside a row group decodes the rows
#: before it, so n slices decode the row group about (n + 1) / 2 times in all.
MAX_SLICES_PER_ROW_GROUP = 16
#: Bytes of the stream buffer under the Parquet reader (pyarrow ``buffer_size``).
STREAM_BUFFER_BYTES = 1 << 20
#: How pyarrow's Hive partitioning writes a null partition value.
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_GLOB_CHARS = re.compile(r"[*?\[]")


class ParquetInputError(ValueError):
    """A Parquet input problem (``transforms.read.inspect_input`` raises it as an ``InputError``)."""


@dataclass(frozen=True)
class ParquetShard:
    """One input file as planned: its row groups (rows, uncompressed bytes) and partition values."""

    path: str
    row_group_rows: tuple[int, ...]
    row_group_bytes: tuple[int, ...]
    partition: tuple[tuple[str, Any], ...] = ()

    @property
    def num_rows(self) -> int:
        return sum(self.row_group_rows)

    def row_group_starts(self) -> list[int]:
        """The first row position of each row group (positions count from 0 over the file)."""
        starts, position = [], 0
        for rows in self.row_group_rows:
            starts.append(position)
            position += rows
        return starts

    def batch_rows(self) -> int:
        """Rows per record batch: about BATCH_BYTES of decoded data, at least one row."""
        rows, size = self.num_rows, sum(self.row_group_bytes)
        if rows == 0 or size == 0:
            return MAX_BATCH_ROWS
        return max(1, min(MAX_BATCH_ROWS, BATCH_BYTES * rows // size))


@dataclass(frozen=True)
class ParquetPlan:
    """What the job reads: the unified schema (with the first shard's metadata) and the shards."""

    schema: pa.Schema
    shards: tuple[ParquetShard, ...]


# ---------------------------------------------------------------- planning


def literal_root(pattern: str) -> str:
    """The directory of ``pattern`` above its first glob character: where partitions start."""
    match = _GLOB_CHARS.search(pattern)
    head = pattern if match is None else pattern[: match.start()]
    return head if head.endswith("/") else posixpath.dirname(head) + "/"


def hive_segments(path: str, root: str) -> list[tuple[str, Optional[str]]]:
    """``[(key, value)]`` of the ``key=value`` directories of ``path`` below ``root``.

    As pyarrow's ``partitioning="hive"``: values are URI-decoded, ``__HIVE_DEFAULT_PARTITION__``
    is null, other directory names are ignored.
    """
    relative = path[len(root):] if path.startswith(root) else path
    segments = []
    for part in relative.split("/")[:-1]:
        key, sep, value = part.partition("=")
        if sep and key:
            decoded = urllib.parse.unquote(value)
            segments.append((urllib.parse.unquote(key), None if decoded == HIVE_NULL else decoded))
    return segments


def _partition_type(values: Sequence[Optional[str]]) -> pa.DataType:
    """int32 when every value is one (pyarrow's inference for Hive partitions), else string."""
    present = [v for v in values if v is not None]
    if not present:
        return pa.string()
    try:
        pa.array(present, pa.string()).cast(pa.int32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.string()
    return pa.int32()


def _read_footer(path: str) -> pq.FileMetaData:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            return pq.ParquetFile(pa.PythonFile(stream, mode="r")).metadata
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
        raise ParquetInputError(f"{path}: not a readable Parquet file: {error}") from None


def _check_names(path: str, names: Sequence[str]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ParquetInputError(
                f"{path}: two columns named {name!r}; a row can hold only one value per name "
                "(rename one of them)"
            )
        seen.add(name)


def _lossless(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of ``source`` is the same value as ``target``."""
    if source == target or pa.types.is_null(source):
        return True
    ints = (pa.types.is_signed_integer, pa.types.is_unsigned_integer)
    if pa.types.is_integer(source) and pa.types.is_integer(target):
        if ints[1](source) and ints[0](target):
            return target.bit_width > source.bit_width
        return ints[0](source) == ints[0](target) and target.bit_width >= source.bit_width
    if pa.types.is_floating(source) and pa.types.is_floating(target):
        return target.bit_width >= source.bit_width
    pairs = (
        (pa.types.is_string, pa.types.is_large_string),
        (pa.types.is_binary, pa.types.is_large_binary),
        (pa.types.is_list, pa.types.is_large_list),
    )
    for small, large in pairs:
        if small(source) and large(target):
            return not pa.types.is_list(source) or _lossless(source.value_type, target.value_type)
    if pa.types.is_dictionary(source) and pa.types.is_dictionary(target):
        return _lossless(source.value_type, target.value_type)
    return False


def _type_conflict(files: Sequence[str], schemas: Sequence[pa.Schema], name: str) -> str:
    typed = [(f, s.field(name).type) for f, s in zip(files, schemas) if name in s.names]
    first_file, first_type = typed[0]
    other_file, other_type = next((f, t) for f, t in typed if t != first_type)
    return (
        f"column {name!r} is {first_type} in {first_file} but {other_type} in {other_file}; "
        "no type holds both without changing values (write the shards with one type)"
    )


def unify(files: Sequence[str], schemas: Sequence[pa.Schema]) -> tuple[pa.Schema, list[str]]:
    """One schema for all shards and what was unified; ParquetInputError if values would change."""
    try:
        unified = pa.unify_schemas(list(schemas), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        names = {n for s in schemas for n in s.names}
        conflicts = [n for n in sorted(names) if len({s.field(n).type for s in schemas if n in s.names}) > 1]
        if conflicts:
            raise ParquetInputError(_type_conflict(files, schemas, conflicts[0])) from None
        raise ParquetInputError(f"the shards' schemas cannot be unified: {error}") from None
    notes = []
    for field in unified:
        having = [(f, s.field(field.name).type) for f, s in zip(files, schemas) if field.name in s.names]
        for _path, arrow_type in having:
            if not _lossless(arrow_type, field.type):
                raise ParquetInputError(_type_conflict(files, schemas, field.name))
        kinds = sorted({str(t) for _, t in having})
        if len(kinds) > 1:
            notes.append(f"column {field.name!r} is {' / '.join(kinds)} across shards: read as {field.type}")
        missing = [f for f, s in zip(files, schemas) if field.name not in s.names]
        if missing:
            notes.append(
                f"column {field.name!r} ({field.type}) is missing from {len(missing)} shard(s), "
                f"e.g. {missing[0]}: null there"
            )
    return unified.with_metadata(schemas[0].metadata), notes


def _partitions(files: Sequence[str], root: str) -> tuple[list[pa.Field], list[tuple]]:
    per_file = [hive_segments(f, root) for f in files]
    keys = [[k for k, _ in segments] for segments in per_file]
    if not any(keys):
        return [], [() for _ in files]
    for path, file_keys in zip(files, keys):
        if file_keys != keys[0]:
            raise ParquetInputError(
                f"{path}: partition directories {file_keys} differ from {files[0]}'s {keys[0]} "
                "(Hive layout: the same key=value levels for every file)"
            )
    fields = []
    for index, key in enumerate(keys[0]):
        fields.append(pa.field(key, _partition_type([s[index][1] for s in per_file])))
    values = []
    for segments in per_file:
        typed = []
        for field, (key, text) in zip(fields, segments):
            value = None if text is None else (int(text) if pa.types.is_int32(field.type) else text)
            typed.append((key, value))
        values.append(tuple(typed))
    return fields, values


def inspect_parquet(files: Sequence[str], image_column: str, root: str) -> ParquetPlan:
    """Every footer read and checked; the schema the job reads; ParquetInputError naming the file.

    ``root`` is the directory where Hive partition directories (``key=value``) may start.
    """
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        footers = list(pool.map(_read_footer, files))
    schemas = [footer.schema.to_arrow_schema() for footer in footers]
    for path, schema in zip(files, schemas):
        _check_names(path, schema.names)
        if image_column not in schema.names:
            raise ParquetInputError(
                f"{path}: no image column {image_column!r}; columns found: {schema.names} "
                "(choose one with --image_column)"
            )
    schema, notes = unify(files, schemas) if len(files) > 1 else (schemas[0], [])
    for note in notes:
        USER_LOG.warning("input schemas unified: %s", note)
    partition_fields, partition_values = _partitions(files, root)
    for field in partition_fields:
        if field.name in schema.names:
            raise ParquetInputError(
                f"partition directory key {field.name!r} (e.g. {files[0]}) is also a column of the files"
            )
        schema = schema.append(field)
    if partition_fields:
        USER_LOG.info("Hive partition columns %s", [f"{f.name}: {f.type}" for f in partition_fields])
    shards = []
    for path, footer, values in zip(files, footers, partition_values):
        groups = [footer.row_group(i) for i in range(footer.num_row_groups)]
        shards.append(
            ParquetShard(
                path,
                tuple(g.num_rows for g in groups),
                tuple(g.total_byte_size for g in groups),
                values,
            )
        )
    return ParquetPlan(schema, tuple(shards))


def output_metadata(
    metadata: Optional[dict[bytes, bytes]], image_column: str, output_column: str
) -> Optional[dict[bytes, bytes]]:
    """The input schema's metadata for the features files, pandas' kept true to the output.

    pandas' index columns are real columns and pass through, so ``pd.read_parquet`` rebuilds the
    index; a RangeIndex is only a description of row positions, which sharded output does not
    keep, so it is dropped (pandas then numbers the rows). The image column's entry describes
    the features column.
    """
    if not metadata or b"pandas" not in metadata:
        return metadata
    out = dict(metadata)
    try:
        pandas = json.loads(metadata[b"pandas"])
        pandas["index_columns"] = [c for c in pandas.get("index_columns", []) if isinstance(c, str)]
        for column in pandas.get("columns", []):
            if column.get("field_name") == image_column:
                column.update(
                    name=output_column, field_name=output_column, pandas_type="list[float32]",
                    numpy_type="object", metadata=None,
                )
        out[b"pandas"] = json.dumps(pandas).encode()
    except (ValueError, TypeError, AttributeError):  # not pandas' layout: keep nothing of it
        del out[b"pandas"]
    return out


# ---------------------------------------------------------------- reading


def initial_splits(shard: ParquetShard, start: int, stop: int) -> list[OffsetRange]:
    """``[start, stop)`` cut at row group boundaries and into slices of large row groups."""
    cuts = {start, stop}
    for first, rows in zip(shard.row_group_starts(), shard.row_group_rows):
        slices = max(1, min(MAX_SLICES_PER_ROW_GROUP, -(-rows // SLICE_ROWS)))
        cuts.update(first + rows * i // slices for i in range(slices + 1))
    points = sorted(c for c in cuts if start <= c <= stop)
    return [OffsetRange(a, b) for a, b in zip(points, points[1:]) if b > a]


def _conform(batch: pa.RecordBatch, schema: pa.Schema, partition: dict[str, Any]) -> pa.RecordBatch:
    """``batch`` in the job's schema: promoted types, null columns it lacks, partition values."""
    arrays = []
    for field in schema:
        if field.name in partition:
            arrays.append(pa.array([partition[field.name]] * batch.num_rows, field.type))
        elif field.name in batch.schema.names:
            column = batch.column(field.name)
            arrays.append(column if column.type == field.type else column.cast(field.type))
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def iter_batches(
    shard: ParquetShard, schema: pa.Schema, start: int, stop: int, batch_rows: Optional[int] = None
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(position of the first row, batch)`` for rows ``[start, stop)`` of the shard, in order.

    Batches come in the job's schema. A range starting inside a row group decodes the rows
    before it (pyarrow cannot seek to a row) and drops them.
    """
    partition = dict(shard.partition)
    columns = [n for n in schema.names if n not in partition]
    batch_rows = batch_rows or shard.batch_rows()
    with FileSystems.open(shard.path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        reader = pq.ParquetFile(
            pa.PythonFile(stream, mode="r"), buffer_size=STREAM_BUFFER_BYTES, pre_buffer=False
        )
        if reader.metadata.num_rows != shard.num_rows:
            raise ParquetInputError(f"{shard.path}: changed since the job was planned")
        present = [n for n in columns if n in reader.schema_arrow.names]
        for group, first in enumerate(shard.row_group_starts()):
            rows = shard.row_group_rows[group]
            if first + rows <= start or rows == 0:
                continue
            if first >= stop:
                return
            position = first
            for batch in reader.iter_batches(
                batch_size=batch_rows, row_groups=[group], columns=present, use_threads=False
            ):
                end = position + batch.num_rows
                if end > start:
                    lo, hi = max(start, position) - position, min(stop, end) - position
                    yield position + lo, _conform(batch.slice(lo, hi - lo), schema, partition)
                position = end
                if position >= stop:
                    return


class _RowRanges(RestrictionProvider):
    """Restrictions of a shard: ranges of its row positions."""

    def initial_restriction(self, shard: ParquetShard) -> OffsetRange:
        return OffsetRange(0, shard.num_rows)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, shard: ParquetShard, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield from initial_splits(shard, restriction.start, restriction.stop)

    def restriction_size(self, shard: ParquetShard, restriction: OffsetRange) -> int:
        return restriction.size()


class _ReadRowRange(beam.DoFn):
    """The rows of one range of a shard as dicts, claimed one by one (any row may end a range)."""

    def __init__(self, schema: pa.Schema):
        self._schema = schema
        self._read = Metrics.counter(metrics.NAMESPACE, metrics.ROWS_READ)

    def process(
        self,
        shard: ParquetShard,
        tracker: OffsetRestrictionTracker = beam.DoFn.RestrictionParam(_RowRanges()),
    ) -> Iterator[dict[str, Any]]:
        restriction = tracker.current_restriction()
        count = 0
        try:
            for position, batch in iter_batches(shard, self._schema, restriction.start, restriction.stop):
                for offset, row in enumerate(batch.to_pylist()):
                    if not tracker.try_claim(position + offset):
                        return
                    count += 1
                    self._read.inc()
                    yield row
        finally:
            _LOG.info(
                "osnet-beam: process %d read %d rows of %s (rows %d-%d)",
                os.getpid(), count, shard.path, restriction.start, restriction.start + count,
            )


class ReadParquetRows(beam.PTransform):
    """The rows of the planned shards as dicts in the plan's schema, split by row range."""

    def __init__(self, plan: ParquetPlan):
        super().__init__()
        self._plan = plan

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Shards" >> beam.Create(list(self._plan.shards))
            | "ReadRowRanges" >> beam.ParDo(_ReadRowRange(self._plan.schema))
        )
