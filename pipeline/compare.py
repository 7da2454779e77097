"""``python -m pipeline.compare OUT_A OUT_B [--key C ...] [--id_column C --camera_column C]``.

Did switching precision, device or checkpoint change the features? Joins two runs row by row on
the ``--key`` columns (default: every pass-through column), then reports the per-row cosine
(min, 1st percentile, median), the largest absolute difference, the rows present in one run only
and, given the label columns, each run's rank-1 and mAP on the rows both have. ``--json`` writes
the figures; ``--report DIR`` an HTML page with the rows whose features moved most (their crops
when ``--input`` names the input table).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Optional, Sequence

import numpy as np

from pipeline import feature_table, report
from pipeline.evaluate import crop_pixels, tool_parser, query_mask, run_evaluation
from pipeline.feature_table import ToolError

_CHUNK_ROWS = 65536


DESCRIPTION = "Compare two runs' features row by row (e.g. fp32 vs fp16, CPU vs GPU, two checkpoints)."
KEY_HELP = "columns that name a row in both runs (default: every pass-through column of OUT_A)"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("python -m pipeline.compare", DESCRIPTION, labels_required=False, key_help=KEY_HELP,
                         input_help="the input table (glob): crops for --report")
    parser.add_argument("run_a", metavar="OUT_A", help="first run's output directory")
    parser.add_argument("run_b", metavar="OUT_B", help="second run's output directory")
    parser.add_argument("--moved", type=int, default=12, metavar="N",
                        help="rows shown in the report, those whose features moved most (default 12)")
    return parser


def row_differences(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row cosine and max absolute difference of two (N, D) matrices, in chunks, float64.

    Equal rows have cosine exactly 1; a zero row has cosine 0 with any other row.
    """
    cosine = np.empty(len(a), np.float64)
    max_abs = np.empty(len(a), np.float64)
    for start in range(0, len(a), _CHUNK_ROWS):
        x = a[start:start + _CHUNK_ROWS].astype(np.float64)
        y = b[start:start + _CHUNK_ROWS].astype(np.float64)
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        dots = np.einsum("ij,ij->i", x, y)
        same = (x == y).all(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 0.0)
        cos = np.where(same, 1.0, cos)  # exactly 1 for equal rows, not 1 - 1 ulp
        cosine[start:start + len(x)] = np.clip(cos, -1.0, 1.0)
        max_abs[start:start + len(x)] = np.abs(x - y).max(axis=1) if x.shape[1] else 0.0
    return cosine, max_abs


def _run(path: str, feature_column: Optional[str]):
    table = feature_table.read_run(path, feature_column or "feature_vector")
    column = feature_table.find_feature_column(table, feature_column)
    return table, column, feature_table.feature_matrix(table, column)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Join, measure, print; write JSON and report if asked."""
    if bool(args.id_column) != bool(args.camera_column):
        raise ToolError("give both --id_column and --camera_column, or neither")
    table_a, column_a, features_a = _run(args.run_a, args.feature_column)
    table_b, column_b, features_b = _run(args.run_b, args.feature_column)
    keys = feature_table.key_columns(table_a, column_a, args.key)
    missing = [c for c in keys if c not in table_b.column_names]
    if missing:
        raise ToolError(f"{args.run_b}: no key column(s) {missing}; columns {table_b.column_names}")
    index_a = feature_table.key_index(table_a, keys, args.run_a)
    index_b = feature_table.key_index(table_b, keys, args.run_b)
    both = [key for key in index_a if key in index_b]
    rows_a = np.array([index_a[k] for k in both], np.int64)
    rows_b = np.array([index_b[k] for k in both], np.int64)
    if features_a.shape[1:] != features_b.shape[1:] and both:
        raise ToolError(f"the runs' features differ in length: {features_a.shape[1]} vs {features_b.shape[1]}")
    cosine, max_abs = row_differences(features_a[rows_a], features_b[rows_b])
    figures: dict[str, Any] = {
        "rows": len(both),
        "min_cosine": float(cosine.min()) if both else float("nan"),
        "p1_cosine": float(np.percentile(cosine, 1)) if both else float("nan"),
        "median_cosine": float(np.median(cosine)) if both else float("nan"),
        "mean_cosine": float(cosine.mean()) if both else float("nan"),
        "max_abs": float(max_abs.max()) if both else float("nan"),
        "identical_rows": int(np.count_nonzero(max_abs == 0)),
        "only_in_a": len(index_a) - len(both),
        "only_in_b": len(index_b) - len(both),
        "key": keys,
    }
    if args.id_column and both:
        ids = feature_table.labels(table_a, args.id_column, "--id_column")[rows_a]
        cameras = feature_table.labels(table_a, args.camera_column, "--camera_column")[rows_a]
        mask = query_mask(cameras, args.query_cameras)
        for name, features, rows in (("a", features_a, rows_a), ("b", features_b, rows_b)):
            result = run_evaluation(features[rows], ids, cameras, mask, histogram=False, device=args.device)
            figures[name] = result.figures()
    print(f"osnet-beam compare: A={args.run_a} B={args.run_b}, joined on {keys}")
    print(format_table(figures))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(figures, stream, indent=2)
            stream.write("\n")
    if args.report:
        path = write_report(args, table_a, keys, both, cosine, max_abs, figures)
        print(f"report: {path}")
    return figures


def format_table(figures: dict[str, Any]) -> str:
    lines = [
        f"rows        {figures['rows']} in both; only in A {figures['only_in_a']}, only in B {figures['only_in_b']}",
        f"cosine      min {figures['min_cosine']:.7f}  p1 {figures['p1_cosine']:.7f}  "
        f"median {figures['median_cosine']:.7f}",
        f"max |a-b|   {figures['max_abs']:.3g}  ({figures['identical_rows']} rows identical)",
    ]
    if "a" in figures:
        lines.append("            rank-1  mAP     queries")
        for name in ("a", "b"):
            run = figures[name]
            lines.append(f"{name.upper():<12}{run['rank1']:.4f}  {run['mAP']:.4f}  {run['queries']}")
    return "\n".join(lines)


def write_report(args: argparse.Namespace, table_a, keys: list[str], both: list, cosine: np.ndarray,
                 max_abs: np.ndarray, figures: dict[str, Any]) -> str:
    worst = np.argsort(cosine, kind="stable")[: max(0, args.moved)]
    cells: dict = {}
    note = ""
    if args.input:
        cells = feature_table.fetch_cells(args.input, keys, [both[i] for i in worst], args.image_column)
    else:
        note = "No --input given: pass the input table to see the crops of these rows."
    moved = []
    for i in worst:
        key = both[i]
        thumb = report.Thumb(crop_pixels(cells.get(key)), "", "query") if args.input else None
        moved.append((dict(zip(keys, key)), float(cosine[i]), float(max_abs[i]), thumb))
    shown = {k: v for k, v in figures.items() if not isinstance(v, (dict, list))}
    for name in ("a", "b"):
        if name in figures:
            shown[f"rank1 {name.upper()}"] = figures[name]["rank1"]
            shown[f"mAP {name.upper()}"] = figures[name]["mAP"]
    return report.write_compare_report(
        args.report, subtitle=f"A {args.run_a}  vs  B {args.run_b}; joined on {keys}",
        figures=shown, histogram_png=report.cosine_histogram_png(cosine), moved=moved, note=note)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return feature_table.run_tool("compare", compare, build_parser().parse_args(argv))


if __name__ == "__main__":
    from pipeline.process_exit import run_command

    run_command(main)
