"""A small demo table in the original producer's format, made on the fly (nothing committed).

Synthetic "pedestrians" (head, torso and legs in per-identity colours, with noise, at varied
sizes) seen by two cameras, plus a few bad rows so the demo shows the errors output too.
``python -m pipeline.demo OUT.csv [N]`` writes one.
"""
from __future__ import annotations

import csv
import sys
import zlib

import numpy as np

from transforms.crop_codec import encode_crop


def synthetic_crop(identity: int, camera: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (H, W, 3) crop whose colours depend on the identity, pose noise on the camera."""
    palette = np.random.default_rng(identity).integers(0, 256, size=(3, 3))
    height = int(rng.integers(96, 200))
    width = int(height * rng.uniform(0.35, 0.5))
    crop = np.empty((height, width, 3), np.int16)
    bounds = [0, height // 6, height // 2, height]
    for part, colour in enumerate(palette):
        crop[bounds[part] : bounds[part + 1]] = colour
    crop += rng.normal(0, 12 + 6 * camera, crop.shape).astype(np.int16)
    return np.clip(crop, 0, 255).astype(np.uint8)


def demo_rows(n_rows: int = 48, seed: int = 0) -> list[list[object]]:
    """Rows ``frame, track_id, camera, file, feature_vector``: good crops and four bad cells."""
    rng = np.random.default_rng(seed)
    rows: list[list[object]] = []
    for index in range(n_rows):
        identity, camera = index % 8, 1 + (index // 8) % 2
        cell = encode_crop(synthetic_crop(identity, camera, rng))
        rows.append([index, identity, f"{camera:02d}", f"demo/{identity:03d}_{index}.png", cell])
    good = rows[0][4]
    truncated = str(good)[: len(str(good)) // 2] + "'}"
    rows += [
        [n_rows, 99, "01", "demo/empty.png", ""],
        [n_rows + 1, 99, "01", "demo/truncated.png", truncated],
        [n_rows + 2, 99, "02", "demo/not_a_dict.png", "__import__('os').system('echo hi')"],
        [
            n_rows + 3,
            99,
            "02",
            "demo/two_colours.png",
            str({"width": 2, "height": 2, "colors": 2, "image": zlib.compress(bytes(8)).hex()}),
        ],
    ]
    return rows


def write_demo_table(path: str, n_rows: int = 48) -> int:
    """Write the demo CSV as the original producer does (pandas' QUOTE_NONNUMERIC layout)."""
    rows = demo_rows(n_rows)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(["frame", "track_id", "camera", "file", "feature_vector"])
        writer.writerows(rows)
    return len(rows)


if __name__ == "__main__":
    count = write_demo_table(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 48)
    print(f"wrote {count} rows to {sys.argv[1]}")
