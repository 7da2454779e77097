"""Helpers for the pipeline tests: writing tables, reading outputs back.

Readers here use the csv module, struct and pyarrow directly, not the project's own codecs, so
a bug in a codec cannot hide itself. The seed table, reference features and ``cosine`` live in
``testkit.reference`` (shared with bench/) and are re-exported here for the tests.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from testkit.reference import cosine, read_seed_rows, reference_features

__all__ = ["COLUMNS", "cosine", "read_csv_features", "read_errors", "read_parquet_features", "read_seed_rows",
           "reference_features", "write_csv"]

csv.field_size_limit(sys.maxsize)
COLUMNS = ["frame", "track_id", "camera", "file", "feature_vector"]


def write_csv(path: Path, rows: list[list], header: list[str] = COLUMNS, raw_lines: dict | None = None) -> None:
    """A table as the producer writes it; ``raw_lines`` puts broken text after the given row index."""
    raw_lines = raw_lines or {}
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(header)
        for index, row in enumerate(rows):
            writer.writerow(row)
            if index in raw_lines:
                stream.flush()
                stream.write(raw_lines[index])


def read_parquet_features(output_dir: Path) -> pa.Table:
    files = sorted(glob.glob(str(output_dir / "features-*-of-*.parquet")))
    assert files, f"no feature shards in {os.listdir(output_dir)}"
    return pa.concat_tables([pq.read_table(f) for f in files])


def read_csv_features(output_dir: Path) -> list[dict]:
    """Feature rows of CSV shards, the features unpacked as the original tool packed them."""
    rows = []
    for path in sorted(glob.glob(str(output_dir / "features-*-of-*.csv"))):
        with open(path, newline="") as stream:
            for row in csv.DictReader(stream, quoting=csv.QUOTE_NONNUMERIC):
                packed = zlib.decompress(bytes.fromhex(row["feature_vector"]))
                row["feature_vector"] = np.array(struct.unpack(f"{len(packed) // 4}f", packed), np.float32)
                row["frame"], row["track_id"] = int(row["frame"]), int(row["track_id"])
                rows.append(row)
    return rows


def read_errors(output_dir: Path) -> list[dict]:
    records = []
    for path in sorted(glob.glob(str(output_dir / "errors-*-of-*.jsonl"))):
        with open(path) as stream:
            records += [json.loads(line) for line in stream if line.strip()]
    return records
