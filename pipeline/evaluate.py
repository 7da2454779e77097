"""``python -m pipeline.evaluate --features OUT --id_column C --camera_column C [...]``.

How good are a run's features on your own cameras? Cross-camera retrieval as re-identification
papers report it (see :mod:`pipeline.reid_metrics`): every crop (or every crop of
``--query_cameras``) queries the crops of the other cameras; rank-1/5/10, mAP and mINP. Prints a
table; ``--json`` writes the figures, ``--report DIR`` an HTML page with a similarity histogram
and a ranked gallery of crops fetched back from ``--input``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, Sequence

import numpy as np

from pipeline import feature_table, report
from pipeline.feature_table import ToolError
from pipeline.reid_metrics import HISTOGRAM_BINS, RetrievalResult, evaluate_retrieval, top_matches
from transforms.crop_codec import CropDecodeError, decode_crop

#: Above this many (query, gallery) pairs a progress bar is shown (on a terminal).
PROGRESS_PAIRS = 20_000_000
TOP_K = 10


def tool_parser(prog: str, description: str, *, labels_required: bool, key_help: str,
                input_help: str) -> argparse.ArgumentParser:
    """The parser of ``evaluate`` or ``compare`` with the options they share: the key and label
    columns, the features column, where the similarities are computed, where the crops are, and
    the figures' JSON and HTML."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--key", nargs="+", metavar="COLUMN", help=key_help)
    parser.add_argument("--id_column", required=labels_required, help="column holding the person identity")
    parser.add_argument("--camera_column", required=labels_required, help="column holding the camera")
    parser.add_argument("--query_cameras", nargs="+", metavar="CAMERA",
                        help="only crops of these cameras query (default: every crop)")
    parser.add_argument("--feature_column", default=None,
                        help="features column (default: the list<float> column; feature_vector for CSV runs)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                        help="where the similarities are computed (default cpu)")
    parser.add_argument("--input", metavar="TABLE", help=input_help)
    parser.add_argument("--image_column", default="feature_vector", help="the input's crop column")
    parser.add_argument("--json", metavar="PATH", help="write the figures as a JSON object")
    parser.add_argument("--report", metavar="DIR", help="write DIR/report.html")
    return parser


DESCRIPTION = "Cross-camera re-identification figures (rank-1/5/10, mAP, mINP) of a run's features."
KEY_HELP = "columns that match a features row to its input row (default: every pass-through column)"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("python -m pipeline.evaluate", DESCRIPTION, labels_required=True, key_help=KEY_HELP,
                         input_help="the run's input table (glob): crops for --report")
    parser.add_argument("--features", required=True, metavar="OUT", help="the run's output directory")
    parser.add_argument("--gallery_queries", type=int, default=12, metavar="N",
                        help="queries shown in the report's ranked gallery (default 12)")
    parser.add_argument("--max_queries", type=int, default=0, metavar="N",
                        help="evaluate a random sample of N queries against the whole gallery (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    return parser


def query_mask(cameras: np.ndarray, query_cameras: Optional[Sequence[str]]) -> Optional[np.ndarray]:
    """Rows whose camera (as text) is one of ``query_cameras``; None for every row."""
    if not query_cameras:
        return None
    as_text = np.array([str(c) for c in cameras])
    mask = np.isin(as_text, list(query_cameras))
    if not mask.any():
        found = sorted(set(as_text.tolist()))[:20]
        raise ToolError(f"no row has a camera in --query_cameras {list(query_cameras)}; cameras found: {found}")
    return mask


def sample_mask(mask: Optional[np.ndarray], n_rows: int, max_queries: int, seed: int) -> Optional[np.ndarray]:
    """At most ``max_queries`` of the rows in ``mask``, drawn at random (seeded)."""
    if max_queries <= 0:
        return mask
    rows = np.arange(n_rows) if mask is None else np.flatnonzero(mask)
    if rows.size <= max_queries:
        return mask
    chosen = np.random.default_rng(seed).choice(rows, size=max_queries, replace=False)
    sampled = np.zeros(n_rows, bool)
    sampled[chosen] = True
    return sampled


def run_evaluation(features: np.ndarray, ids: np.ndarray, cameras: np.ndarray,
                   mask: Optional[np.ndarray], *, histogram: bool, device: str) -> RetrievalResult:
    """The figures, with a progress bar on a terminal when the run is large."""
    from tqdm import tqdm

    n_queries = len(features) if mask is None else int(np.count_nonzero(mask))
    large = n_queries * len(features) >= PROGRESS_PAIRS
    with tqdm(total=n_queries, unit="query", desc="evaluate", disable=None if large else True,
              file=sys.stderr, dynamic_ncols=True) as bar:
        return evaluate_retrieval(features, ids, cameras, mask,
                                  histogram_bins=HISTOGRAM_BINS if histogram else 0,
                                  device=device, progress=bar.update)


def format_table(figures: dict[str, Any]) -> str:
    names = ("rank-1", "rank-5", "rank-10", "mAP", "mINP", "queries", "identities")
    keys = ("rank1", "rank5", "rank10", "mAP", "mINP", "queries", "identities")
    cells = [f"{figures[k]:.4f}" if isinstance(figures[k], float) else str(figures[k]) for k in keys]
    widths = [max(len(n), len(c)) for n, c in zip(names, cells)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
                     for row in (names, cells))


def crop_pixels(cell: Any) -> Optional[np.ndarray]:
    """The crop in an input cell, or None when it is missing or not a valid crop."""
    if cell is None:
        return None
    try:
        return decode_crop(cell)
    except CropDecodeError:
        return None


def ranked_gallery(args: argparse.Namespace, table, keys: list[str], features: np.ndarray,
                   ids: np.ndarray, cameras: np.ndarray,
                   result: RetrievalResult) -> tuple[list[list[report.Thumb]], str]:
    """For a seeded sample of the evaluated queries: the query and its top-10 other-camera crops."""
    n_show = min(args.gallery_queries, result.queries)
    rng = np.random.default_rng(args.seed)
    shown = np.sort(rng.choice(result.query_index, size=n_show, replace=False)) if n_show else np.zeros(0, int)
    best_rows, best_sims = top_matches(features, cameras, shown, TOP_K, device=args.device)
    all_keys = feature_table.row_keys(table, keys)
    cells: dict = {}
    note = ""
    if args.input:
        wanted = {all_keys[r] for r in np.concatenate([shown, best_rows.reshape(-1)]) if r >= 0}
        cells = feature_table.fetch_cells(args.input, keys, wanted, args.image_column)
        if len(cells) < len(wanted):
            note = (f"{len(wanted) - len(cells)} of {len(wanted)} crops were not found in {args.input} "
                    f"by the key columns {keys}.")
    else:
        note = "No --input given: pass the run's input table to see the crops."
    average_precision = dict(zip(result.query_index.tolist(), result.average_precision.tolist()))
    ranked = []
    for query, rows, sims in zip(shown, best_rows, best_sims):
        caption = f"query\nAP {average_precision[int(query)]:.2f}\nid {ids[query]}\ncam {cameras[query]}"
        row = [report.Thumb(crop_pixels(cells.get(all_keys[query])), caption, "query")]
        for gallery, sim in zip(rows, sims):
            if gallery < 0:
                continue
            kind = "match" if ids[gallery] == ids[query] else "miss"
            row.append(report.Thumb(crop_pixels(cells.get(all_keys[gallery])), f"{sim:.3f}\nid {ids[gallery]}", kind))
        ranked.append(row)
    return ranked, note


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Read the run, compute the figures, print the table; write JSON and report if asked."""
    table = feature_table.read_run(args.features, args.feature_column or "feature_vector")
    column = feature_table.find_feature_column(table, args.feature_column)
    features = feature_table.feature_matrix(table, column)
    ids = feature_table.labels(table, args.id_column, "--id_column")
    cameras = feature_table.labels(table, args.camera_column, "--camera_column")
    keys = feature_table.key_columns(table, column, args.key) if args.report else []
    mask = sample_mask(query_mask(cameras, args.query_cameras), len(features), args.max_queries, args.seed)
    result = run_evaluation(features, ids, cameras, mask, histogram=bool(args.report), device=args.device)
    figures = result.figures()
    asked = f"cameras {', '.join(args.query_cameras)}" if args.query_cameras else "every camera"
    print(f"osnet-beam evaluate: {figures['rows']} rows, {figures['cameras']} cameras; queries from "
          f"{asked}, each against the crops of the other cameras ({args.features})")
    print(format_table(figures))
    if figures["queries_without_match"]:
        print(f"{figures['queries_without_match']} queries left out: no other camera saw their identity")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(figures, stream, indent=2)
            stream.write("\n")
    if args.report:
        ranked, note = ranked_gallery(args, table, keys, features, ids, cameras, result)
        histogram = report.similarity_histogram_png(
            result.histogram_edges, result.same_identity_histogram, result.different_identity_histogram)
        path = report.write_evaluate_report(
            args.report, subtitle=f"features {args.features}; queries from {asked}",
            figures=figures, histogram_png=histogram, ranked=ranked, note=note)
        print(f"report: {path}")
    return figures


def main(argv: Optional[Sequence[str]] = None) -> int:
    return feature_table.run_tool("evaluate", evaluate, build_parser().parse_args(argv))


if __name__ == "__main__":
    from pipeline.process_exit import run_command

    run_command(main)
