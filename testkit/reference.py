"""Readers of ../shared's reference material, feature comparison and retrieval metrics, for the
tests and the benchmarks: the checkpoints and their architectures, the seed table, the real crops,
their labels, torchreid's reference features.

Written independently of model/ and transforms/ on purpose: a test that reused the code under test
to compute its expectation could not fail.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

csv.field_size_limit(sys.maxsize)  # a seed-table cell holds a whole crop

#: The checkpoints in ../shared/weights (file stem -> architecture); the stem also names their
#: reference features in ../shared/data/reference.
CHECKPOINTS = {
    "osnet_x0_25_msmt17": "osnet_x0_25",
    "osnet_x0_25_market1501": "osnet_x0_25",
    "osnet_ibn_x1_0_random": "osnet_ibn_x1_0",
    "osnet_x1_0_market1501_from_int8": "osnet_x1_0",
}


#: ../shared's seed table: the real crops in the producer's CSV format, relative to ../shared.
SEED_TABLE = Path("data") / "seed_format" / "real_crops.csv"


def checkpoint_path(shared: Path, stem: str) -> Path:
    """The weights file of one of :data:`CHECKPOINTS` in ../shared."""
    return Path(shared) / "weights" / f"{stem}.pth"


def read_seed_rows(seed_table: Path) -> list[dict]:
    """The seed table's rows with the producer's types (numbers unquoted, strings quoted)."""
    with open(seed_table, newline="") as stream:
        rows = []
        for row in csv.DictReader(stream, quoting=csv.QUOTE_NONNUMERIC):
            row["frame"], row["track_id"] = int(row["frame"]), int(row["track_id"])
            rows.append(row)
    return rows


def read_crop(path: Path) -> np.ndarray:
    """A crop as the reference read it: decoded by content (the .png files hold JPEG), RGB uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_reference_features(reference_dir: Path, stem: str) -> tuple[list[str], np.ndarray]:
    """(file names, torchreid's features (N, 512) in the same order) of one checkpoint."""
    with np.load(Path(reference_dir) / f"{stem}.npz", allow_pickle=False) as data:
        return [str(f) for f in data["files"]], data["features"].astype(np.float32)


def reference_features(reference_dir: Path, stem: str) -> dict[str, np.ndarray]:
    """file -> torchreid's feature vector, for one checkpoint."""
    files, features = read_reference_features(reference_dir, stem)
    return dict(zip(files, features))


def load_reference(reference_dir: Path, real_crops_dir: Path, stem: str) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """(file names, crops in the same order, reference features (N, 512)) for one checkpoint."""
    files, features = read_reference_features(reference_dir, stem)
    crops = [read_crop(real_crops_dir / f) for f in files]
    return files, crops, features


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of corresponding rows, computed in float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (float64)."""
    return float(row_cosine(np.asarray(a)[None], np.asarray(b)[None])[0])


def read_labels(real_crops_dir: Path) -> dict[str, tuple[str, str]]:
    """file -> (person_id, camera) from labels.csv."""
    with open(real_crops_dir / "labels.csv", newline="") as handle:
        return {row["file"]: (row["person_id"], row["camera"]) for row in csv.DictReader(handle)}


def cross_camera_retrieval(
    features: np.ndarray, files: Sequence[str], labels: dict[str, tuple[str, str]],
    query_camera: str = "01", gallery_camera: str = "02",
) -> tuple[float, float]:
    """(rank-1, mAP) of query-camera crops against gallery-camera crops, cosine on L2-normalised features.

    Average precision per query is the mean of precision@k over the ranks k of its true matches
    (every identity has matches in the gallery here); ties are broken by gallery order.
    """
    ids = np.array([labels[f][0] for f in files])
    cams = np.array([labels[f][1] for f in files])
    unit = features.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    query, gallery = cams == query_camera, cams == gallery_camera
    similarity = unit[query] @ unit[gallery].T
    gallery_ids = ids[gallery]
    hits, precisions = [], []
    for qid, scores in zip(ids[query], similarity):
        order = np.argsort(-scores, kind="stable")
        relevant = gallery_ids[order] == qid
        ranks = np.flatnonzero(relevant) + 1  # 1-based ranks of the true matches
        hits.append(bool(relevant[0]))
        precisions.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(hits)), float(np.mean(precisions))
