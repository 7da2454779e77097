"""A finished run's features as a table, and rows of an input table matched to it by key columns.

Shared by ``python -m pipeline.evaluate`` and ``python -m pipeline.compare``: reading the run
(:func:`read_run`), the (N, D) feature matrix, the labels, the key columns that name a row, and
the crops of a few rows fetched back from the input table. No Beam transforms: files are listed
and opened through Beam's filesystems only, so ``gs://`` paths work as they do for the job.
"""
from __future__ import annotations

import posixpath
import sys
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import outputs
from transforms import csv_records
from transforms.feature_codec import decode_features_hex
from transforms.read import InputError, detect_format, match_files, open_lines

Key = tuple


class ToolError(ValueError):
    """A problem with what the user asked for: reported as one line, exit status 2."""


def run_tool(name: str, tool: Callable[[Any], Any], args: Any) -> int:
    """Run an evaluate/compare tool: 0, or 2 with one ``osnet-beam NAME: error:`` line."""
    try:
        tool(args)
    except ToolError as error:
        print(f"osnet-beam {name}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _csv_batches(path: str, batch_rows: int = 4096) -> Iterator[pa.Table]:
    """A CSV file read as the job reads CSV (a field's type follows its quoting), in batches."""
    with FileSystems.open(path) as stream:
        lines = open_lines(stream)
        header = csv_records.read_header(lines)
        columns: list[list[Any]] = [[] for _ in header]
        yielded = False

        def batch() -> pa.Table:
            try:
                return pa.table({name: pa.array(v) for name, v in zip(header, columns)})
            except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
                raise ToolError(f"{path}: a column mixes types: {error}") from None

        for record in csv_records.iter_records(lines, len(header)):
            if not isinstance(record, csv_records.Record):
                raise ToolError(f"{path}: line {record.line_number + 1}: {record.detail}")
            for column, value in zip(columns, record.values):
                column.append(value)
            if len(columns[0]) >= batch_rows:
                yield batch()
                columns, yielded = [[] for _ in header], True
        if columns[0] or not yielded:
            yield batch()


def _read_csv_table(path: str) -> pa.Table:
    batches = list(_csv_batches(path, batch_rows=1 << 62))
    return batches[0] if batches else pa.table({})


def _read_parquet(path: str, columns: Optional[Sequence[str]] = None) -> pa.Table:
    with FileSystems.open(path) as stream:
        return pq.read_table(pa.PythonFile(stream, mode="r"), columns=columns)


def _decode_csv_features(table: pa.Table, column: str) -> pa.Table:
    """The hex-of-zlib features column of a CSV run as list<float32>."""
    try:
        vectors = [decode_features_hex(text) for text in table.column(column).to_pylist()]
    except ValueError as error:
        raise ToolError(f"column {column!r} does not hold features: {error}") from None
    values = pa.array(np.concatenate(vectors) if vectors else np.zeros(0, np.float32))
    offsets = pa.array(np.concatenate([[0], np.cumsum([v.size for v in vectors])]).astype(np.int32))
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.ListArray.from_arrays(offsets, values))


def read_run(output_dir: str, feature_column: str = "feature_vector") -> pa.Table:
    """Every features row of a run's output directory (Parquet or CSV shards), one table.

    A directory with a manifest gives exactly its run's rows (``pipeline.outputs.read_features``);
    one without (feature shards written some other way) gives every ``features-*-of-*`` shard.
    CSV features come back as list<float32> like Parquet's.
    """
    if outputs.read_manifest(output_dir) is not None:
        return outputs.read_features(output_dir)
    pattern = posixpath.join(output_dir.rstrip("/"), "features-*-of-*.*")
    try:
        files = match_files(pattern)
        fmt = detect_format(files)
    except InputError as error:
        raise ToolError(f"{output_dir}: not a run's output directory ({error})") from None
    if fmt == "parquet":
        return pa.concat_tables([_read_parquet(path) for path in files], promote_options="default")
    tables = [_read_csv_table(path) for path in files]
    table = pa.concat_tables(tables, promote_options="permissive")
    if feature_column not in table.column_names:
        raise ToolError(f"{output_dir}: no features column {feature_column!r}; columns "
                        f"{table.column_names} (choose one with --feature_column)")
    return _decode_csv_features(table, feature_column)


def find_feature_column(table: pa.Table, requested: Optional[str] = None) -> str:
    """The features column: as requested, else the only list<float> column."""
    if requested:
        if requested not in table.column_names:
            raise ToolError(f"no column {requested!r}; columns: {table.column_names}")
        return requested
    found = [f.name for f in table.schema
             if pa.types.is_list(f.type) and pa.types.is_floating(f.type.value_type)]
    if len(found) != 1:
        raise ToolError(f"cannot tell the features column among {table.column_names}: "
                        "name it with --feature_column")
    return found[0]


def feature_matrix(table: pa.Table, column: str) -> np.ndarray:
    """The (N, D) float32 features, without a Python object per row."""
    chunked = table.column(column)
    if chunked.null_count:
        raise ToolError(f"column {column!r} has {chunked.null_count} null feature(s)")
    lists = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    if len(lists) == 0:
        return np.zeros((0, 0), np.float32)
    sizes = np.unique(lists.value_lengths().to_numpy())
    if sizes.size != 1:
        raise ToolError(f"column {column!r} holds vectors of several lengths: {sizes.tolist()}")
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(lists), int(sizes[0]))


def labels(table: pa.Table, column: str, option: str) -> np.ndarray:
    """A label column as a numpy array; ToolError if it is missing or has nulls."""
    if column not in table.column_names:
        raise ToolError(f"no column {column!r} for {option}; columns: {table.column_names}")
    values = table.column(column)
    if values.null_count:
        raise ToolError(f"column {column!r} ({option}) has {values.null_count} empty value(s)")
    return np.asarray(values.to_pylist())


def key_columns(table: pa.Table, feature_column: str, requested: Optional[Sequence[str]]) -> list[str]:
    """The columns that name a row: as requested, else every pass-through column."""
    keys = list(requested) if requested else [c for c in table.column_names if c != feature_column]
    missing = [c for c in keys if c not in table.column_names]
    if missing:
        raise ToolError(f"key column(s) {missing} not in {table.column_names}")
    if not keys:
        raise ToolError("no key columns: the table has only its features column")
    return keys


def row_keys(table: pa.Table, keys: Sequence[str]) -> list[Key]:
    """One tuple of key values per row."""
    return list(zip(*(table.column(c).to_pylist() for c in keys)))


def key_index(table: pa.Table, keys: Sequence[str], what: str) -> dict[Key, int]:
    """Row number by key; ToolError when the keys do not name each row once."""
    index: dict[Key, int] = {}
    duplicates = 0
    for row, key in enumerate(row_keys(table, keys)):
        if index.setdefault(key, row) != row:
            duplicates += 1
    if duplicates:
        raise ToolError(f"{what}: {duplicates} row(s) repeat the key {list(keys)}; "
                        "choose columns that name one row each with --key")
    return index


def _input_batches(files: Sequence[str], fmt: str, columns: Sequence[str]) -> Iterator[pa.Table]:
    for path in files:
        if fmt == "parquet":
            with FileSystems.open(path) as stream:
                reader = pq.ParquetFile(pa.PythonFile(stream, mode="r"))
                missing = [c for c in columns if c not in reader.schema_arrow.names]
                if missing:
                    raise ToolError(f"{path}: no column(s) {missing}")
                for batch in reader.iter_batches(batch_size=4096, columns=list(columns)):
                    yield pa.Table.from_batches([batch])
        else:
            for table in _csv_batches(path):
                missing = [c for c in columns if c not in table.column_names]
                if missing:
                    raise ToolError(f"{path}: no column(s) {missing}")
                yield table.select(list(columns))


def fetch_cells(pattern: str, keys: Sequence[str], wanted: Iterable[Key],
                image_column: str = "feature_vector") -> dict[Key, Any]:
    """The image cells of the input rows whose key values are in ``wanted`` (first match wins).

    Streams the input once, batch by batch, holding only the cells asked for.
    """
    wanted = set(wanted)
    try:
        files = match_files(pattern)
        fmt = detect_format(files)
    except InputError as error:
        raise ToolError(f"--input: {error}") from None
    found: dict[Key, Any] = {}
    for batch in _input_batches(files, fmt, [*keys, image_column]):
        cells = batch.column(image_column)
        for row, key in enumerate(row_keys(batch, keys)):
            if key in wanted and key not in found:
                found[key] = cells[row].as_py()
        if len(found) == len(wanted):
            break
    return found
