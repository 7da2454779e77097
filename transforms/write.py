"""Sharded outputs: features as Parquet or CSV, errors as JSON lines, through Beam's file sinks.

Beam's sinks write each shard to a temporary file and move it into place only when the whole
write succeeds, so a job that fails part-way leaves no partial ``features-*`` or ``errors-*``
shard behind. Shard names carry the run id (``features-RUN-SSSSS-of-NNNNN``) so that two runs'
files never collide; which run an output directory holds is said by its manifest
(:mod:`pipeline.outputs`).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.io.textio import WriteToText

from transforms.csv_records import canonical_text, format_record
from transforms.errors import to_json_line
from transforms.feature_codec import encode_features_hex
from transforms.parquet_source import output_metadata
from transforms.row_schema import COLUMN_TYPES, conform_row, widen

_LOG = logging.getLogger(__name__)
FEATURES_PREFIX = "features"
ERRORS_PREFIX = "errors"
#: Rows held back until the end of the job: a value of theirs widened its column (Parquet output).
HELD_PREFIX = "beam-temp-held"
#: The held rows' pass-through values, as read, in one JSON object (the features beside it).
HELD_VALUES = "values_json"
WIDENED_TAG = "widened"
HELD_TAG = "held"
#: How many characters of a widening value the manifest and the log show.
EXAMPLE_CHARS = 60
#: Seconds between progress lines from each worker thread.
PROGRESS_EVERY_S = 30.0


def shard_prefix(output_dir: str, kind: str, run_id: str = "") -> str:
    """``DIR/features-RUN``: the prefix Beam's sink gets (it adds ``-SSSSS-of-NNNNN.suffix``)."""
    return FileSystems.join(output_dir, f"{kind}-{run_id}" if run_id else kind)


def output_columns(columns: Sequence[str], image_column: str, output_column: str) -> list[str]:
    """The output's columns: the input's, with the features where the image cell was."""
    return [output_column if name == image_column else name for name in columns]


def features_schema(
    input_schema: pa.Schema, image_column: str, output_column: str
) -> pa.Schema:
    """The Parquet schema: pass-through columns keep their types; features are list<float32>.

    The input's schema metadata (pandas' index description) comes along, true to the output."""
    fields = []
    for field in input_schema:
        if field.name == image_column:
            fields.append(pa.field(output_column, pa.list_(pa.float32()), nullable=False))
        else:
            fields.append(field)
    return pa.schema(fields, metadata=output_metadata(input_schema.metadata, image_column, output_column))


def held_schema(output_column: str) -> pa.Schema:
    return pa.schema([pa.field(HELD_VALUES, pa.string()), pa.field(output_column, pa.list_(pa.float32()))])


class _ToOutputRow(beam.DoFn):
    """``(row, features)`` to an output row; logs progress while a long job runs.

    With ``csv_types`` (CSV input: the row holds its values as read, the types come from the
    files' samples), each value is put in its column's type here. A value that does not fit
    widens its column (:mod:`transforms.row_schema`): the widening goes to ``WIDENED_TAG``, and for
    Parquet output the row to ``HELD_TAG`` until the job's end writes it in the widened schema;
    CSV output writes every value as read, whatever its column's type.
    """

    def __init__(self, image_column: str, output_column: str, csv: bool, columns: Sequence[str],
                 csv_types: Optional[pa.Schema] = None):
        self._output_column = output_column
        self._csv = csv
        self._passthrough = [name for name in columns if name != image_column]
        self._output_order = output_columns(columns, image_column, output_column)
        self._types = csv_types

    def setup(self) -> None:
        self._count = 0
        self._started = self._last_log = time.monotonic()

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_log >= PROGRESS_EVERY_S:
            rate = self._count / max(now - self._started, 1e-9)
            _LOG.info("osnet-beam: %d rows encoded by this worker (%.1f rows/s)", self._count, rate)
            self._last_log = now

    def process(self, element: tuple[Mapping[str, Any], np.ndarray]) -> Iterator[Any]:
        row, features = element
        self._count += 1
        self._log_progress()
        out = {name: row.get(name) for name in self._passthrough}
        if self._types is not None:
            conformed, widened = conform_row(out, self._types, skip=self._output_column)
            for name, arrow_type in widened.items():
                example = (canonical_text(out[name]) or "")[:EXAMPLE_CHARS]
                yield beam.pvalue.TaggedOutput(WIDENED_TAG, (name, (str(arrow_type), example)))
            if not self._csv:
                if widened:
                    values = json.dumps(out, ensure_ascii=False)
                    yield beam.pvalue.TaggedOutput(HELD_TAG, {HELD_VALUES: values, self._output_column: features})
                    return
                out = conformed
        if self._csv:
            out[self._output_column] = encode_features_hex(features)
            yield format_record([out[name] for name in self._output_order])
        else:
            out[self._output_column] = features
            yield out


class WidenColumns(beam.CombineFn):
    """``(type name, example)`` of one column's widening values -> the widest, with an example."""

    def create_accumulator(self) -> Optional[tuple[str, str]]:
        return None

    def add_input(self, accumulator, value):
        return self.merge_accumulators([accumulator, value])

    def merge_accumulators(self, accumulators):
        merged = None
        for each in accumulators:
            if each is None:
                continue
            if merged is None:
                merged = tuple(each)
            else:
                wider = widen(COLUMN_TYPES[merged[0]], COLUMN_TYPES[each[0]])
                example = each[1] if str(wider) == each[0] and str(wider) != merged[0] else merged[1]
                merged = (str(wider), example)
        return merged

    def extract_output(self, accumulator):
        return accumulator


class WriteFeatures(beam.PTransform):
    """``(row, features)`` pairs to ``DIR/features-RUN-SSSSS-of-NNNNN.{parquet,csv}``.

    Expands to ``{"shards": paths written, "widened": (column, (type name, example))}``: the
    columns a value past the CSV type sample widened, combined per column. Held rows (Parquet
    output, see :class:`_ToOutputRow`) are written to ``DIR/beam-temp-held-RUN-*`` and their paths
    are among ``shards``: the manifest step (:mod:`pipeline.widening`) writes them as features.
    """

    def __init__(
        self,
        output_dir: str,
        input_schema: pa.Schema,
        image_column: str,
        output_column: str,
        output_format: str = "parquet",
        num_shards: int = 0,
        run_id: str = "",
        csv_types: bool = False,
    ):
        super().__init__()
        if output_format not in ("parquet", "csv"):
            raise ValueError(f"unknown output format {output_format!r}: use parquet or csv")
        self._output_dir, self._run_id, self._num_shards = output_dir, run_id, num_shards
        self._prefix = shard_prefix(output_dir, FEATURES_PREFIX, run_id)
        self._schema = input_schema
        self._image_column, self._output_column = image_column, output_column
        self._format, self._csv_types = output_format, csv_types

    def expand(self, features: beam.PCollection) -> dict[str, beam.PCollection]:
        columns = list(self._schema.names)
        schema = features_schema(self._schema, self._image_column, self._output_column)
        rows = features | "ToOutputRow" >> beam.ParDo(
            _ToOutputRow(self._image_column, self._output_column, self._format == "csv", columns,
                         csv_types=schema if self._csv_types else None)
        ).with_outputs(WIDENED_TAG, HELD_TAG, main="rows")
        widened = rows[WIDENED_TAG] | "WidenColumns" >> beam.CombinePerKey(WidenColumns())
        if self._format == "csv":
            header = format_record(output_columns(columns, self._image_column, self._output_column))
            written = rows.rows | "WriteCsv" >> WriteToText(
                self._prefix, file_name_suffix=".csv", num_shards=self._num_shards, header=header
            )
            return {"shards": written, "widened": widened}
        written = rows.rows | "WriteParquet" >> WriteToParquet(
            self._prefix, schema, file_name_suffix=".parquet", num_shards=self._num_shards
        )
        if not self._csv_types:
            return {"shards": written, "widened": widened}
        held = rows[HELD_TAG] | "WriteHeld" >> WriteToParquet(
            shard_prefix(self._output_dir, HELD_PREFIX, self._run_id), held_schema(self._output_column),
            file_name_suffix=".parquet",
        )
        return {"shards": (written, held) | "FeatureAndHeldShards" >> beam.Flatten(), "widened": widened}


class WriteErrors(beam.PTransform):
    """Error records to ``DIR/errors-RUN-SSSSS-of-NNNNN.jsonl``, one JSON object per line."""

    def __init__(self, output_dir: str, num_shards: int = 0, run_id: str = ""):
        super().__init__()
        self._prefix = shard_prefix(output_dir, ERRORS_PREFIX, run_id)
        self._num_shards = num_shards

    def expand(self, errors: beam.PCollection) -> beam.PCollection:
        return (
            errors
            | "ToJson" >> beam.Map(to_json_line)
            | "WriteJsonl"
            >> WriteToText(self._prefix, file_name_suffix=".jsonl", num_shards=self._num_shards)
        )

