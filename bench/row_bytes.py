"""Bytes per row in flight between the job's steps, before and after the decode step drops the cell.

    python bench/row_bytes.py [--table PATH]

Deterministic (no timing): builds, for every row of the seed table (the 198 real crops of
``$OSNET_SHARED_DIR/data/seed_format/real_crops.csv``), the element each step hands the next, and
sizes it two ways: encoded by the coder Beam gives an untyped PCollection (what a runner writes
when it ships or spills an element between stages), and as the Python objects a worker holds
(the row's cell string and the crop's buffer; what RunInference's batching keeps in memory).
"Before" is the element as the decode step emitted it until this change (the row with its original
image cell, beside the crop); "after" is what :class:`transforms.decode.DecodeCrops` emits now.
Writes ``bench/results/row_bytes.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from apache_beam.coders import registry  # noqa: E402

from tests.pipeline_helpers import read_seed_rows  # noqa: E402
from transforms.decode import DecodeCrops  # noqa: E402
from model.osnet import FEATURE_DIM  # noqa: E402

IMAGE_COLUMN = "feature_vector"
RESULTS = REPO / "bench" / "results"


def _held_bytes(element: tuple) -> int:
    """The bytes a worker holds for one element: every value of the row and the array's buffer."""
    row, array = element
    return sum(sys.getsizeof(v) for v in row.values()) + sys.getsizeof(row) + int(array.nbytes)


def _stats(values: list[int]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 1), "median": statistics.median(values),
            "min": min(values), "max": max(values), "total": sum(values)}


def measure(rows: list[dict]) -> dict:
    coder = registry.get_coder(typing.Any)
    decode = DecodeCrops(IMAGE_COLUMN)
    decode.setup()
    features = np.zeros(FEATURE_DIM, np.float32)
    stages: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        (after_row, crop), = list(decode.process(row))
        elements = {
            "decode -> RunInference (row, crop)": ((row, crop), (after_row, crop)),
            "RunInference -> write (row, features)": ((row, features), (after_row, features)),
        }
        for stage, (before, after) in elements.items():
            sizes = stages.setdefault(stage, {k: [] for k in ("coded_before", "coded_after", "held_before", "held_after")})
            sizes["coded_before"].append(len(coder.encode(before)))
            sizes["coded_after"].append(len(coder.encode(after)))
            sizes["held_before"].append(_held_bytes(before))
            sizes["held_after"].append(_held_bytes(after))
    return {stage: {k: _stats(v) for k, v in sizes.items()} for stage, sizes in stages.items()}


def _markdown(result: dict, n_rows: int) -> str:
    lines = [f"Bytes per row in flight, {n_rows} rows of the seed table (medians; mean in brackets).", "",
             "| step boundary | coded before | coded after | held before | held after |", "|---|---|---|---|---|"]
    for stage, s in result.items():
        cells = [f"{s[k]['median']:,.0f} ({s[k]['mean']:,.0f})" for k in ("coded_before", "coded_after", "held_before", "held_after")]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    shared = Path(os.environ.get("OSNET_SHARED_DIR", REPO.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(shared / "data" / "seed_format" / "real_crops.csv"))
    args = parser.parse_args()
    rows = read_seed_rows(Path(args.table))
    result = {"table": Path(args.table).name, "rows": len(rows), "coder": type(registry.get_coder(typing.Any)).__name__,
              "stages": measure(rows)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "row_bytes.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "row_bytes.md").write_text(_markdown(result["stages"], len(rows)))
    print(_markdown(result["stages"], len(rows)))


if __name__ == "__main__":
    main()
