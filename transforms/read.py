"""Reading CSV or Parquet shards into row dicts, with every file checked before the job starts.

Per-file problems (no file matches, an unreadable Parquet footer, a shard without the image
column, a CSV file without a usable header) stop the job at construction, naming the file, before
any worker time is spent. Per-row problems never stop it: a CSV record that does not parse becomes
an error record with its raw text (see :mod:`transforms.csv_records`), and a bad image cell is left
to :class:`transforms.decode.DecodeCrops`.
"""
from __future__ import annotations

import io
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadFromParquet
from apache_beam.metrics import Metrics

from transforms import csv_records
from transforms.row_schema import ColumnValueError, conform_row, infer_csv_schema
from transforms.errors import ERRORS_TAG, error_record
from transforms.reasons import Reason

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "osnet"
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
#: How many CSV records of the first file decide the pass-through column types.
TYPE_SAMPLE_RECORDS = 1000


class InputError(ValueError):
    """The input cannot be read as asked: raised at construction, before the job runs."""


@dataclass(frozen=True)
class InputLayout:
    """What the job will read: the format, the files and the columns (with Arrow types)."""

    format: str
    files: tuple[str, ...]
    schema: pa.Schema

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


def detect_format(files: Sequence[str], requested: str = "auto") -> str:
    """``csv`` or ``parquet``: as requested, else from the files' extensions (all must agree)."""
    if requested in ("csv", "parquet"):
        return requested
    if requested != "auto":
        raise InputError(f"unknown input format {requested!r}: use auto, csv or parquet")
    kinds = set()
    for path in files:
        name = path.lower()
        if name.endswith(CSV_SUFFIXES):
            kinds.add("csv")
        elif name.endswith(PARQUET_SUFFIXES):
            kinds.add("parquet")
        else:
            raise InputError(f"cannot tell the format of {path}: pass --input_format csv|parquet")
    if len(kinds) != 1:
        raise InputError(f"the input mixes CSV and Parquet files: {sorted(kinds)}")
    return kinds.pop()


GLOB_CHARACTERS = "*?["


def match_files(pattern: str) -> list[str]:
    """Every file the glob matches, sorted, through Beam's filesystems (local, gs://, s3://...).

    A name with glob characters (``a[1].csv``) that exists as a file is that one file.
    """
    magic = any(c in pattern for c in GLOB_CHARACTERS)
    if magic and FileSystems.exists(pattern):
        _LOG.info("input %s: a file of that name exists, read as that file (not as a glob)", pattern)
        return [pattern]
    try:
        results = FileSystems.match([pattern])
    except Exception as error:  # Beam raises BeamIOError subclasses per filesystem
        raise InputError(f"cannot list {pattern}: {error}") from None
    files = sorted(m.path for r in results for m in r.metadata_list)
    if not files:
        how = " (read as a glob: * ? [ ] are wildcards, and no file of that literal name exists)" if magic else ""
        raise InputError(f"no files match {pattern}{how}")
    return files


def open_text(path: str) -> io.TextIOWrapper:
    """A file as UTF-8 text with line endings kept (quoted cells may hold newlines)."""
    return io.TextIOWrapper(FileSystems.open(path), encoding="utf-8", errors="replace", newline="")


def _csv_header(path: str) -> list[str]:
    try:
        with open_text(path) as stream:
            return csv_records.read_header(stream)
    except csv_records.CsvHeaderError as error:
        raise InputError(f"{path}: {error}") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error}") from None


def _parquet_schema(path: str) -> pa.Schema:
    try:
        with FileSystems.open(path) as stream:
            return pq.read_schema(pa.PythonFile(stream, mode="r"))
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
        raise InputError(f"{path}: not a readable Parquet file: {error}") from None


def _sample_csv_rows(path: str, n_fields: int) -> list[list[Any]]:
    with open_text(path) as stream:
        next(csv_records.iter_raw_records(stream), None)  # the header
        records = csv_records.iter_records(stream, n_fields)
        sample = itertools.islice(records, TYPE_SAMPLE_RECORDS)
        return [r.values for r in sample if isinstance(r, csv_records.Record)]


def inspect_input(pattern: str, image_column: str, input_format: str = "auto") -> InputLayout:
    """Check every matched file before the job starts; return what the job will read.

    Raises InputError naming the file and the columns found when a file cannot be read or lacks
    the image column, so a bad shard costs seconds, not a failed job hours later.
    """
    files = match_files(pattern)
    fmt = detect_format(files, input_format)
    read_columns = _csv_header if fmt == "csv" else (lambda f: _parquet_schema(f).names)
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        per_file = list(pool.map(read_columns, files))
    for path, columns in zip(files, per_file):
        if image_column not in columns:
            raise InputError(
                f"{path}: no image column {image_column!r}; columns found: {list(columns)} "
                "(choose one with --image_column)"
            )
    if fmt == "csv":
        first = per_file[0]
        for path, columns in zip(files, per_file):
            if list(columns) != list(first):
                raise InputError(f"{path}: columns {columns} differ from {files[0]}'s {first}")
        schema = infer_csv_schema(first, _sample_csv_rows(files[0], len(first)))
    else:
        schema = _parquet_schema(files[0])
    return InputLayout(fmt, tuple(files), schema)


class ReadCsvFile(beam.DoFn):
    """Streams one CSV file into row dicts typed by ``schema``; a broken record is an error."""

    def __init__(self, schema: pa.Schema, image_column: str):
        self._schema = schema
        self._columns = list(schema.names)
        self._image_column = image_column

    def setup(self) -> None:
        self._rows = Metrics.counter(METRICS_NAMESPACE, "rows_read")

    def _error(self, reason: str, detail: str, **where: Any) -> beam.pvalue.TaggedOutput:
        self._rows.inc()
        Metrics.counter(METRICS_NAMESPACE, f"errors_{reason}").inc()
        return beam.pvalue.TaggedOutput(ERRORS_TAG, error_record(reason, detail, **where))

    def process(self, readable: fileio.ReadableFile) -> Iterator[Any]:
        path = readable.metadata.path
        with open_text(path) as stream:
            header = csv_records.read_header(stream)  # consumes the header's lines
            if header != self._columns:
                raise InputError(f"{path}: columns changed since the job started: {header}")
            for record in csv_records.iter_records(stream, len(header)):
                line = record.line_number + 1  # the header was line 1
                if isinstance(record, csv_records.BrokenRecord):
                    yield self._error(
                        Reason.BAD_CSV_RECORD.value,
                        record.detail,
                        raw_line=record.raw,
                        source=path,
                        line=line,
                    )
                    continue
                row = dict(zip(header, record.values))
                try:
                    yield conform_row(row, self._schema, skip=self._image_column)
                except ColumnValueError as error:
                    yield self._error(
                        Reason.BAD_COLUMN_VALUE.value, str(error), row=row, source=path, line=line
                    )


class ReadRows(beam.PTransform):
    """Rows of the input as dicts (column -> value); CSV records that do not parse as errors.

    Expands to a tagged result with ``rows`` and ``errors``. Parquet goes through Beam's
    ``ReadFromParquet`` (splittable by row group); CSV through a per-file reader, because a quoted
    cell may hold newlines and a broken record must become an error row, not a failed job.
    """

    def __init__(self, pattern: str, layout: InputLayout, image_column: str):
        super().__init__()
        self._pattern = pattern
        self._layout = layout
        self._image_column = image_column

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        pattern = self._pattern
        if self._layout.format == "parquet":
            rows = pbegin | "ReadParquet" >> ReadFromParquet(pattern)
            errors = pbegin | "NoReadErrors" >> beam.Create([])
            return {"rows": rows, "errors": errors}
        parsed = (
            pbegin
            | "MatchCsv" >> fileio.MatchFiles(pattern)
            | "OpenCsv" >> fileio.ReadMatches()
            | "SpreadFiles" >> beam.Reshuffle()
            | "ParseCsv"
            >> beam.ParDo(ReadCsvFile(self._layout.schema, self._image_column)).with_outputs(ERRORS_TAG, main="rows")
        )
        return {"rows": parsed.rows, "errors": parsed[ERRORS_TAG]}

