"""Mode scale: a large table with every kind of bad row through ``python -m pipeline``; wall time,
peak RSS of the process tree, and a check that every row came out exactly once.

The check reads the run back as a user would: the counts of its ``_SUCCESS.json`` manifest and
its rows through ``pipeline.outputs.read_features`` / ``read_errors`` (the shards the manifest
names, nothing else in the folder).
"""
from __future__ import annotations

import argparse
import collections
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from bench.harness import log, run_measured, tree_env
from bench.machine import REPO_ROOT
from bench.tables import plan_scale_rows, seed_rows, write_scale_table

RSS_TARGET_MB = 3072


def manifest_counters(counts: dict[str, Any]) -> dict[str, int]:
    """The manifest's counts in the flat form of the job's counters: rows_read, rows_encoded, errors_<reason>."""
    flat = {"rows_read": counts["rows_read"], "rows_encoded": counts["rows_encoded"]}
    flat.update({f"errors_{reason}": n for reason, n in counts["errors_by_reason"].items()})
    return flat


def verify_scale_output(output: Path, expected_rows: dict[int, dict], expected_broken: dict[str, tuple],
                        reasons: collections.Counter, good: int, n_rows: int,
                        widened_rows: Optional[dict[int, str]] = None) -> dict[str, Any]:
    """Every row exactly once: a feature row (good rows) or an error row with its reason and data;
    the manifest's counts agree with the injected rows; the values past every type sample
    (``widened_rows``: frame -> track_id text) widened the column and kept their rows and text."""
    import numpy as np
    import pyarrow.compute as pc

    from pipeline.outputs import read_errors, read_features, read_manifest

    problems: list[str] = []
    manifest = read_manifest(str(output))
    if manifest is None:
        return {"rows_in": n_rows, "feature_rows": 0, "error_rows": 0, "rows_in_equals_features_plus_errors": False,
                "errors_per_reason": {}, "injected_per_reason": dict(sorted(reasons.items())),
                "per_reason_counts_match": False, "every_error_row_holds_its_original_data": False,
                "problems": [f"no run manifest in {output}"], "problem_count": 1, "ok": False, "manifest_counts": None}
    features = read_features(str(output))
    frames = features.column("frame").to_numpy()
    vectors = features.column("feature_vector")
    bad_dims = int(np.sum(pc.list_value_length(vectors).to_numpy() != 512))
    if not np.all(np.isfinite(pc.list_flatten(vectors).to_numpy())):
        problems.append("non-finite feature values")
    feature_rows = int(frames.size)
    if widened_rows:
        tracks = dict(zip(frames.tolist(), features.column("track_id").to_pylist()))
        changed = [f for f, text in widened_rows.items() if tracks.get(f) != text]
        if changed:
            problems.append(f"{len(changed)} rows past the type sample lost their track_id text or row, e.g. {changed[:5]}")
        if manifest["features"].get("widened_columns", {}).get("track_id", {}).get("type") != "string":
            problems.append("track_id was not widened to text in the manifest")
    del features, vectors
    if bad_dims:
        problems.append(f"{bad_dims} feature rows without 512 values")
    if np.unique(frames).size != frames.size:
        problems.append("a row appears twice in the features")
    if any(int(f) in expected_rows for f in frames):
        problems.append("a bad row came out as features")
    seen_reasons: collections.Counter = collections.Counter()
    seen_rows: set[int] = set()
    seen_broken: set[str] = set()
    error_rows = 0
    for record in read_errors(str(output)):
        error_rows += 1
        seen_reasons[record["reason"]] += 1
        if "raw_line" in record:
            where = expected_broken.get(record["raw_line"])
            if where is None or record["raw_line"] in seen_broken:
                problems.append(f"unexpected or repeated broken record {record['raw_line'][:80]!r}")
            elif (record.get("source"), record.get("line")) != where:
                problems.append(f"broken record {record['raw_line'][:40]!r} at {record.get('source')}:"
                                f"{record.get('line')}, expected {where[0]}:{where[1]}")
            seen_broken.add(record["raw_line"])
            continue
        frame = record.get("row", {}).get("frame")
        expected = expected_rows.get(frame)
        if expected is None or frame in seen_rows:
            problems.append(f"unexpected or repeated error row for frame {frame}: {record['reason']}")
            continue
        seen_rows.add(frame)
        if record["reason"] != expected["reason"]:
            problems.append(f"frame {frame} ({expected.get('kind', 'column')}): reason {record['reason']}, "
                            f"expected {expected['reason']}")
        if record["row"] != expected["row"]:
            problems.append(f"frame {frame} ({expected.get('kind', 'column')}): the error row does not hold "
                            "the original data")
        if not record.get("detail"):
            problems.append(f"frame {frame}: no detail")
    missing_rows = set(expected_rows) - seen_rows
    missing_broken = set(expected_broken) - seen_broken
    if missing_rows:
        problems.append(f"{len(missing_rows)} bad rows missing from the errors, e.g. {sorted(missing_rows)[:5]}")
    if missing_broken:
        problems.append(f"{len(missing_broken)} broken records missing from the errors")
    if feature_rows != good:
        problems.append(f"{feature_rows} feature rows, expected {good}")
    if feature_rows + error_rows != n_rows:
        problems.append(f"rows in {n_rows} != feature rows {feature_rows} + error rows {error_rows}")
    if seen_reasons != reasons:
        problems.append(f"errors per reason {dict(seen_reasons)} != injected {dict(reasons)}")
    counts = manifest["counts"]
    if (counts["errors_by_reason"] != dict(sorted(reasons.items())) or counts["rows_read"] != n_rows
            or counts["rows_encoded"] != good or counts["errors"] != n_rows - good):
        problems.append(f"the manifest's counts {counts} disagree with the injected rows")
    if (counts["rows_encoded"], counts["errors"]) != (feature_rows, error_rows):
        problems.append(f"the manifest's counts {counts} disagree with the rows read back")
    return {
        "rows_in": n_rows,
        "feature_rows": feature_rows,
        "error_rows": error_rows,
        "rows_in_equals_features_plus_errors": feature_rows + error_rows == n_rows,
        "errors_per_reason": dict(sorted(seen_reasons.items())),
        "injected_per_reason": dict(sorted(reasons.items())),
        "per_reason_counts_match": seen_reasons == reasons,
        "every_error_row_holds_its_original_data": not any("original data" in p or "expected" in p for p in problems),
        "problems": problems[:50],
        "problem_count": len(problems),
        "ok": not problems,
        "manifest_counts": counts,
    }


def run_scale(args: argparse.Namespace, shared: Optional[Path], workdir: Path) -> dict[str, Any]:
    from weights import BUNDLED_WEIGHTS

    seeds, source = seed_rows(shared)
    kinds, planned = plan_scale_rows(args.scale_rows, args.scale_bad_fraction, args.scale_large_copies,
                                     args.scale_huge_copies, args.scale_shards)
    table_dir = workdir / "scale_input"
    started = time.perf_counter()
    expected_rows, expected_broken, reasons, good, widened_rows = write_scale_table(table_dir, kinds, seeds, args.scale_shards)
    size = sum(p.stat().st_size for p in table_dir.iterdir())
    log(f"scale table: {args.scale_rows} rows ({args.scale_rows - good} bad) in {args.scale_shards} CSV shards, "
        f"{size / 2**30:.2f} GiB, written in {time.perf_counter() - started:.0f}s; {source}")
    output = workdir / "scale_output"
    cmd = [sys.executable, "-m", "pipeline", "--input", str(table_dir / "*.csv"), "--output", str(output),
           "--weights", args.scale_weights or BUNDLED_WEIGHTS, "--arch", args.scale_arch, *args.scale_arg]
    log("running: " + " ".join(cmd))
    measured = run_measured(cmd, "scale", workdir, timeout_s=args.scale_timeout, env=tree_env(REPO_ROOT))
    log(f"  pipeline: {measured['wall_s']:.0f}s, peak RSS of the process tree {measured['peak_tree_rss_mb']:.0f} MB")
    started = time.perf_counter()
    verified = verify_scale_output(output, expected_rows, expected_broken, reasons, good, args.scale_rows, widened_rows)
    log(f"  verified in {time.perf_counter() - started:.0f}s: {'OK' if verified['ok'] else verified['problems'][:5]}")
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(table_dir, ignore_errors=True)
    return {
        "what": "python -m pipeline on the DirectRunner (default options), CSV shards in, Parquet out",
        "command": cmd,
        "input": {**planned, "good_rows": good, "files": args.scale_shards, "bytes": size, "crops": source},
        "arch": args.scale_arch,
        "wall_s": measured["wall_s"],
        "rows_per_s": args.scale_rows / measured["wall_s"],
        "peak_tree_rss_mb": measured["peak_tree_rss_mb"],
        "rss_target_mb": RSS_TARGET_MB,
        "rss_target_met": measured["peak_tree_rss_mb"] < RSS_TARGET_MB,
        "rss_timeline_mb": measured["rss_timeline_mb"],
        "foreign_cores": measured["foreign_cores"],
        "counters": manifest_counters(verified["manifest_counts"]) if verified["manifest_counts"] else {},
        "verification": verified,
    }
