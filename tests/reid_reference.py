"""An independent statement of the cross-camera retrieval protocol, and runs built by hand.

``retrieval_figures`` is written from the protocol, query by query with a full sort, as plain
numpy loops: it shares no code with ``pipeline.reid_metrics`` (which never sorts a gallery), so
each checks the other. The run builders write features outputs with csv / struct / zlib /
pyarrow directly, not with the project's codecs.
"""
from __future__ import annotations

import csv
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from testkit.reference import read_seed_rows


def retrieval_figures(features: np.ndarray, ids, cameras, query_mask=None) -> dict:
    """rank-1/5/10, mAP, mINP: each query against every crop of the other cameras.

    Sorted by similarity, highest first; among equal similarities the wrong crops come first
    (ties count against the query). Queries without a true match are left out.
    """
    x = np.asarray(features, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1)
    ids, cameras = np.asarray(ids), np.asarray(cameras)
    queries = range(len(x)) if query_mask is None else np.flatnonzero(query_mask)
    first_ranks, aps, inps, identities = [], [], [], set()
    for q in queries:
        gallery = [g for g in range(len(x)) if cameras[g] != cameras[q]]
        sims = np.array([float(np.dot(x[q], x[g])) for g in gallery])
        matches = np.array([ids[g] == ids[q] for g in gallery], dtype=bool)
        if not matches.any():
            continue
        order = np.lexsort((matches, -sims))  # by -sim, then wrong (False) before right
        ranked = matches[order]
        positions = np.flatnonzero(ranked) + 1  # 1-based ranks of the true matches
        first_ranks.append(positions[0])
        aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
        inps.append(len(positions) / positions[-1])
        identities.add(ids[q])
    if not first_ranks:
        return {"queries": 0, "identities": 0}
    first = np.array(first_ranks)
    return {
        "rank1": float(np.mean(first <= 1)),
        "rank5": float(np.mean(first <= 5)),
        "rank10": float(np.mean(first <= 10)),
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "queries": len(first_ranks),
        "identities": len(identities),
    }


def seed_columns(seed_table: Path) -> list[dict]:
    """The seed table's pass-through columns (no crops), with the producer's types."""
    return [{k: v for k, v in row.items() if k != "feature_vector"} for row in read_seed_rows(seed_table)]


def write_parquet_run(directory: Path, rows: list[dict], features: np.ndarray, shards: int = 1) -> Path:
    """A features output as the job writes it: the columns and a list<float32> feature_vector."""
    os.makedirs(directory, exist_ok=True)
    for shard, part in enumerate(np.array_split(np.arange(len(rows)), shards)):
        columns = {name: [rows[i][name] for i in part] for name in ("frame", "track_id", "camera", "file")}
        columns["feature_vector"] = pa.array([features[i].astype(np.float32) for i in part],
                                             type=pa.list_(pa.float32()))
        pq.write_table(pa.table(columns), directory / f"features-{shard:05d}-of-{shards:05d}.parquet")
    return directory


def write_csv_run(directory: Path, rows: list[dict], features: np.ndarray) -> Path:
    """A CSV features output: QUOTE_NONNUMERIC, features as hex of zlib of packed float32."""
    os.makedirs(directory, exist_ok=True)
    with open(directory / "features-00000-of-00001.csv", "w", newline="") as stream:
        writer = csv.writer(stream, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(["frame", "track_id", "camera", "file", "feature_vector"])
        for row, vector in zip(rows, features):
            packed = struct.pack(f"<{len(vector)}f", *vector.tolist())
            writer.writerow([row["frame"], row["track_id"], row["camera"], row["file"],
                             zlib.compress(packed).hex()])
    return directory
