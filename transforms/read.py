"""Reading CSV or Parquet shards into row dicts, with every file checked before the job starts.

Per-file problems (no file matches, an unreadable Parquet footer, a shard without the image
column, a CSV file without a usable header) stop the job at construction, naming the file, before
any worker time is spent. Per-row problems never stop it: a CSV record that does not parse becomes
an error record with its raw text (see :mod:`transforms.csv_records`), and a bad image cell is left
to :class:`transforms.decode.DecodeCrops`.
"""
from __future__ import annotations

import base64
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import USER_LOG, csv_records, metrics, parquet_source
from transforms.csv_source import CsvFilePlan, RawRecord, ReadCsvRecords, binary_stream
from transforms.csv_source import is_compressed, parse_raw_record, plan_csv_files
from transforms.progress import ProgressWriter
from transforms.row_schema import infer_csv_schema
from transforms.errors import ERRORS_TAG, error_record

_LOG = logging.getLogger(__name__)
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
#: How many CSV records of each file (at most) decide the pass-through column types.
TYPE_SAMPLE_RECORDS = 1000
#: Bytes read for the type sample across all files, and at least per file (records stay whole).
TYPE_SAMPLE_TOTAL_BYTES = 256 * 1024 * 1024
TYPE_SAMPLE_MIN_FILE_BYTES = 256 * 1024


class InputError(ValueError):
    """The input cannot be read as asked: raised at construction, before the job runs."""


@dataclass(frozen=True)
class InputLayout:
    """What the job will read: the format, the files and the columns (with Arrow types)."""

    format: str
    files: tuple[str, ...]
    schema: pa.Schema
    #: Parquet only: every shard's row groups and partition values, read from its footer.
    parquet_shards: tuple[parquet_source.ParquetShard, ...] = ()
    #: CSV only: how each file is read (split by lines, or whole), from the planning scan.
    csv_plans: tuple[CsvFilePlan, ...] = ()
    #: CSV only: delimiter, encoding and record bound (the delimiter resolved per file).
    dialect: csv_records.CsvDialect = csv_records.DEFAULT_DIALECT

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
        USER_LOG.info("input %s: a file of that name exists, read as that file (not as a glob)", pattern)
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


def open_lines(stream: Any, limit: Optional[int] = None) -> Iterator[bytes]:
    """A binary stream's lines, endings kept (records are decoded one by one: csv_records);
    compressed files (``.gz``, ``.bz2``, ``.zst``) are decompressed by their suffix."""
    stream = binary_stream(stream)
    read = 0
    for line in iter(stream.readline, b""):
        yield line
        read += len(line)
        if limit is not None and read >= limit:
            return


def _csv_header(path: str, dialect: csv_records.CsvDialect) -> list[str]:
    try:
        with FileSystems.open(path) as stream:
            return csv_records.read_header(open_lines(stream), dialect.for_path(path))
    except csv_records.CsvHeaderError as error:
        raise InputError(f"{path}: {error}") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error}") from None


def _sample_csv_rows(
    path: str, n_fields: int, dialect: csv_records.CsvDialect, max_bytes: Optional[int] = None,
    drop: Optional[int] = None,
) -> list[list[Any]]:
    """The first records of one file (up to TYPE_SAMPLE_RECORDS, about ``max_bytes``), without
    the values of column ``drop`` (the image column: its type is not used, its cells are large)."""
    dialect = dialect.for_path(path)
    with FileSystems.open(path) as stream:
        lines = open_lines(stream, max_bytes)
        csv_records.read_header(lines, dialect)
        records = csv_records.iter_records(lines, n_fields, dialect)
        sample = itertools.islice(records, TYPE_SAMPLE_RECORDS)
        rows = [r.values for r in sample if isinstance(r, csv_records.Record)]
    if drop is not None:
        for values in rows:
            values[drop] = None
    return rows


def inspect_input(
    pattern: str,
    image_column: str,
    input_format: str = "auto",
    dialect: Optional[csv_records.CsvDialect] = None,
) -> InputLayout:
    """Check every matched file before the job starts; return what the job will read.

    Raises InputError naming the file and the columns found when a file cannot be read or lacks
    the image column, so a bad shard costs seconds, not a failed job hours later.
    """
    dialect = dialect or csv_records.DEFAULT_DIALECT
    files = match_files(pattern)
    fmt = detect_format(files, input_format)
    if fmt == "parquet":
        try:
            plan = parquet_source.inspect_parquet(files, image_column, parquet_source.literal_root(pattern))
        except parquet_source.ParquetInputError as error:
            raise InputError(str(error)) from None
        return InputLayout(fmt, tuple(files), plan.schema, plan.shards)
    read_columns = lambda f: _csv_header(f, dialect)  # noqa: E731
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        per_file = list(pool.map(read_columns, files))
    for path, columns in zip(files, per_file):
        if image_column not in columns:
            how = f", {dialect.for_path(path).describe()}" if fmt == "csv" else ""
            raise InputError(
                f"{path}: no image column {image_column!r}; columns found: {list(columns)}{how} "
                "(choose one with --image_column)"
            )
    if fmt == "csv":
        first = per_file[0]
        for path, columns in zip(files, per_file):
            if list(columns) != list(first):
                raise InputError(f"{path}: columns {columns} differ from {files[0]}'s {first}")
        # the first records of every file decide the types (csv_records / row_schema)
        budget = max(TYPE_SAMPLE_MIN_FILE_BYTES, TYPE_SAMPLE_TOTAL_BYTES // len(files))
        with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
            drop = list(first).index(image_column)
            samples = pool.map(lambda f: _sample_csv_rows(f, len(first), dialect, budget, drop), files)
            rows = [row for sample in samples for row in sample]
        schema = infer_csv_schema(first, rows)
        try:
            plans = plan_csv_files(files)
        except Exception as error:  # OSError locally, BeamIOError and friends elsewhere
            raise InputError(f"cannot scan the CSV input: {error}") from None
        return InputLayout(fmt, tuple(files), schema, csv_plans=plans, dialect=dialect)
    raise InputError(f"unknown input format {fmt!r}")


class ParseCsvRecords(beam.DoFn):
    """:data:`~transforms.csv_source.RawRecord` s to row dicts of the values as read (typed by
    their quoting, :mod:`transforms.csv_records`); a record that does not parse is an error row."""

    def __init__(
        self,
        schema: pa.Schema,
        image_column: str,
        dialect: csv_records.CsvDialect = csv_records.DEFAULT_DIALECT,
        progress_dir: Optional[str] = None,
    ):
        self._progress_dir = progress_dir
        self._schema = schema
        self._columns = list(schema.names)
        self._image_column = image_column
        self._dialect = dialect

    def setup(self) -> None:
        # every record, parsed or not: a broken one never reaches the decode step
        self._rows = Metrics.counter(metrics.NAMESPACE, metrics.ROWS_READ)
        self._parsed = 0
        self._dialects: dict[str, csv_records.CsvDialect] = {}  # the delimiter, per file
        self._progress = ProgressWriter.for_directory(self._progress_dir) if self._progress_dir else None

    def teardown(self) -> None:
        # lets a user (and the tests) see how the records spread over the worker processes
        _LOG.info("csv records parsed by process %d: %d", os.getpid(), self._parsed)

    def _error(self, reason: str, detail: str, raw_bytes: Optional[bytes] = None, **where: Any) -> Any:
        Metrics.counter(metrics.NAMESPACE, metrics.error_counter(reason)).inc()
        record = error_record(reason, detail, **where)
        if raw_bytes is not None:  # the record's bytes exactly, where they are not valid text
            record["raw_base64"] = base64.b64encode(raw_bytes).decode("ascii")
        return beam.pvalue.TaggedOutput(ERRORS_TAG, record)

    def process(self, record: RawRecord) -> Iterator[Any]:
        if self._progress is not None:
            self._progress.add("bytes", len(record[2]) + 1)  # the record and its line end
        source = record[0]
        dialect = self._dialects.get(source)
        if dialect is None:
            dialect = self._dialects[source] = self._dialect.for_path(source)
        parsed = parse_raw_record(record, len(self._columns), dialect)
        if parsed is None:
            return
        self._parsed += 1
        self._rows.inc()
        line = parsed.line_number
        if isinstance(parsed, csv_records.BrokenRecord):
            yield self._error(
                parsed.reason, parsed.detail, parsed.raw_bytes, raw_line=parsed.raw, source=source, line=line
            )
            return
        # values as read: each is put in its column's type where the row is written, once the
        # columns a later value widens are known (transforms.write, transforms.row_schema)
        yield dict(zip(self._columns, parsed.values))


class ReadRows(beam.PTransform):
    """Rows of the input as dicts (column -> value); CSV records that do not parse as errors.

    Reads exactly the files of ``layout`` (matched and checked at planning; the glob is not matched
    again): the Parquet shards' plans and the CSV files' plans travel with the job.

    Expands to a tagged result with ``rows`` and ``errors``. Parquet goes through
    :class:`transforms.parquet_source.ReadParquetRows` (streamed in small batches, split by row
    range, also inside a row group); CSV through :mod:`transforms.csv_source` (split by byte
    ranges, or read whole and redistributed), then parsed here, where a broken record becomes an
    error row, not a failed job.
    """

    def __init__(self, layout: InputLayout, image_column: str, progress_dir: Optional[str] = None,
                 spread_whole_files: bool = True):
        super().__init__()
        self._progress_dir = progress_dir
        self._spread_whole_files = spread_whole_files
        self._layout = layout
        self._image_column = image_column

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        if self._layout.format == "parquet":
            plan = parquet_source.ParquetPlan(self._layout.schema, self._layout.parquet_shards)
            rows = pbegin | "ReadParquet" >> parquet_source.ReadParquetRows(plan)
            errors = pbegin | "NoReadErrors" >> beam.Create([])
            return {"rows": rows, "errors": errors}
        plans = self._layout.csv_plans or plan_csv_files(self._layout.files)
        parsed = (
            pbegin
            | "ReadCsv" >> ReadCsvRecords(plans, self._layout.dialect, n_fields=len(self._layout.schema.names),
                                          spread=self._spread_whole_files)
            | "ParseCsv"
            >> beam.ParDo(
                ParseCsvRecords(self._layout.schema, self._image_column, self._layout.dialect, self._progress_dir)
            ).with_outputs(ERRORS_TAG, main="rows")
        )
        return {"rows": parsed.rows, "errors": parsed[ERRORS_TAG]}


def input_totals(layout: InputLayout) -> tuple[Optional[int], Optional[int]]:
    """``(rows, bytes)`` of the input as far as planning knows them, for the progress bar.

    Parquet footers give the rows; for CSV the bytes of the records (the parse step counts the
    bytes it has parsed), unless a file is compressed, whose size says nothing of its records.
    """
    if layout.format == "parquet":
        return sum(shard.num_rows for shard in layout.parquet_shards), None
    if not layout.csv_plans or any(is_compressed(plan.path) for plan in layout.csv_plans):
        return None, None
    return None, sum(plan.size - plan.data_start for plan in layout.csv_plans)
