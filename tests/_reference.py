"""Helpers for tests against ../shared: reading the real crops, comparing features, retrieval metrics.

Written independently of model/ on purpose: a test that reused the code under test to compute its
expectation could not fail.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# The checkpoints in ../shared/weights, their architecture, and the reference features' file stem.
CHECKPOINTS = {
    "osnet_x0_25_msmt17": "osnet_x0_25",
    "osnet_x0_25_market1501": "osnet_x0_25",
    "osnet_ibn_x1_0_random": "osnet_ibn_x1_0",
    "osnet_x1_0_market1501_from_int8": "osnet_x1_0",
}


def read_crop(path: Path) -> np.ndarray:
    """A crop as the reference read it: decoded by content (the .png files hold JPEG), RGB uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def load_reference(reference_dir: Path, real_crops_dir: Path, stem: str) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """(file names, crops in the same order, reference features (N, 512)) for one checkpoint."""
    with np.load(reference_dir / f"{stem}.npz", allow_pickle=False) as data:
        files = [str(f) for f in data["files"]]
        features = data["features"].astype(np.float32)
    crops = [read_crop(real_crops_dir / f) for f in files]
    return files, crops, features


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of corresponding rows, computed in float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


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
