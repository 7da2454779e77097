"""Scale-out benchmark: does ONE input file spread over two SDK processes, and how much faster?

Runs the real CLI (``python -m pipeline``) on one input file with 1 SDK process ``--threads=1``
and with 2 processes (``--direct_num_workers=2 --direct_running_mode=multi_processing``)
``--threads=1`` each, interleaved repeat by repeat so machine noise hits both alike.

Steady-state throughput without instrumenting the job: every configuration runs on two inputs of
different sizes (by default N and 2N rows built from the seed table); the extra rows over the extra
wall time, ``(rows_big - rows_small) / (wall_big - wall_small)``, cancel start-up, model loading and
planning. Reported as medians over repeats, and the ratio 2 processes / 1 process. Also reported:
each process's share of the rows (from the line the CSV parse step logs per process, and from
RunInference's ``BatchElements statistics`` lines, which cover Parquet too) and the peak RSS of
the whole process tree (psutil, polled).

    python bench/scaleout.py                              # CSV, 1,000 and 2,000 rows, x1.0 weights
    python bench/scaleout.py --format parquet             # one single-row-group Parquet file
    python bench/scaleout.py --input a.parquet --input b.parquet   # your own two files
    python bench/scaleout.py --tiny                       # a smoke run (bundled small weights)

Writes ``<out>/<tag>_latest.json`` and ``.md`` (default ``bench/results/scaleout_latest.*``).
Run it on a quiet machine for figures; the tiny mode only proves the script works.
"""
from __future__ import annotations

import argparse
import datetime
import time
import json
import os
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

if not __package__:  # run as a script
    import _as_package  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]

from bench.harness import run_measured, tree_env  # noqa: E402
from bench.machine import find_shared  # noqa: E402
from bench.tables import COLUMNS, bench_rows, seed_rows, write_bench_table  # noqa: E402
from testkit.reference import checkpoint_path  # noqa: E402

X1_0_STEM = "osnet_x1_0_market1501_from_int8"
CONFIGS = {
    "one_process": ["--threads=1"],
    "two_processes": ["--threads=1", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}
PARSED = re.compile(r"csv records parsed by process (\d+): (\d+)")
BATCHED = re.compile(r"BatchElements statistics: element_count=(\d+)")


def log(message: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_input(path: Path, n_rows: int, seeds: list[list[Any]], fmt: str) -> Path:
    """N rows: the seed rows replicated, frame and file unique; CSV, or Parquet in ONE row group."""
    if fmt == "csv":
        write_bench_table(path, n_rows, seeds)
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(bench_rows(n_rows, seeds))
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)})
    pq.write_table(table, path, row_group_size=max(1, n_rows))  # one row group, as pandas does
    return path


def run_pipeline(input_path: Path, config: str, weights: str, workdir: Path, label: str,
                 timeout_s: float, poll_s: float = 0.2) -> dict[str, Any]:
    """One CLI run: wall time, peak RSS of the whole process tree, the run manifest's counts,
    per-process rows (from the INFO lines of the parse step and of RunInference's batcher)."""
    from pipeline.outputs import read_manifest

    output = workdir / f"out-{label}"
    cmd = [sys.executable, "-m", "pipeline", "--input", str(input_path), "--output", str(output),
           "--weights", weights, "--log_level", "info", *CONFIGS[config]]  # per-process lines are INFO
    measured = run_measured(cmd, label, workdir, poll_s=poll_s, timeout_s=timeout_s, env=tree_env(REPO_ROOT))
    manifest = read_manifest(str(output))
    if manifest is None:
        raise RuntimeError(f"{label}: no run manifest in {output}")
    counts = manifest["counts"]
    rows_read, encoded, errors = counts["rows_read"], counts["rows_encoded"], counts["errors"]
    stderr = (workdir / f"{label}.stderr").read_text()
    parsed: dict[str, int] = {}
    for pid, count in PARSED.findall(stderr):
        parsed[pid] = parsed.get(pid, 0) + int(count)
    batched = [int(n) for n in BATCHED.findall(stderr)]
    return {
        "label": label, "config": config, "input": str(input_path), "wall_s": round(measured["wall_s"], 3),
        "peak_tree_rss_mb": round(measured["peak_tree_rss_mb"], 1),
        "rows_read": rows_read, "rows_encoded": encoded, "errors": errors,
        "csv_rows_by_process": parsed,
        "encoded_shares_by_batcher": [round(n / encoded, 3) for n in batched if n] if encoded else [],
        "parsed_shares_by_process": {p: round(n / rows_read, 3) for p, n in parsed.items()} if rows_read else {},
    }


def _median(values: Sequence[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def steady_rate(small: dict, big: dict) -> Optional[float]:
    """Extra rows per extra second between a small and a big run of one configuration."""
    rows, seconds = big["rows_encoded"] - small["rows_encoded"], big["wall_s"] - small["wall_s"]
    return rows / seconds if rows > 0 and seconds > 0 else None


def summarise(runs: list[dict], inputs: list[Path], repeats: int) -> dict[str, Any]:
    by = {(r["config"], r["input"], r["repeat"]): r for r in runs}
    small, big = str(inputs[0]), str(inputs[-1])
    configs: dict[str, Any] = {}
    for config in CONFIGS:
        mine = [r for r in runs if r["config"] == config]
        per_repeat = []
        if len(inputs) > 1:
            per_repeat = [steady_rate(by[(config, small, i)], by[(config, big, i)]) for i in range(repeats)]
        big_runs = [r for r in mine if r["input"] == big]
        configs[config] = {
            "steady_rows_per_s": {"median": _median(per_repeat), "values": [round(v, 2) if v else None for v in per_repeat]},
            "wall_s": {i: _median([r["wall_s"] for r in mine if r["input"] == i]) for i in map(str, inputs)},
            "end_to_end_rows_per_s_big": _median([r["rows_encoded"] / r["wall_s"] for r in big_runs]),
            "peak_tree_rss_mb": {"max": max(r["peak_tree_rss_mb"] for r in mine),
                                 "median_big": _median([r["peak_tree_rss_mb"] for r in big_runs])},
            "parsed_shares_by_process_big": [sorted(r["parsed_shares_by_process"].values()) for r in big_runs],
            "encoded_shares_by_batcher_big": [sorted(r["encoded_shares_by_batcher"]) for r in big_runs],
        }
    one, two = (configs[c]["steady_rows_per_s"]["median"] for c in CONFIGS)
    ratios = []
    if len(inputs) > 1:
        for i in range(repeats):
            a = steady_rate(by[("one_process", small, i)], by[("one_process", big, i)])
            b = steady_rate(by[("two_processes", small, i)], by[("two_processes", big, i)])
            ratios.append(b / a if a and b else None)
    e2e_one, e2e_two = (configs[c]["end_to_end_rows_per_s_big"] for c in CONFIGS)
    return {
        "configs": configs,
        "ratio_two_over_one": {
            "steady_of_medians": round(two / one, 3) if one and two else None,
            "median_of_per_repeat": _median(ratios),
            "end_to_end_big": round(e2e_two / e2e_one, 3) if e2e_one and e2e_two else None,
        },
        "counts_equal_across_configs": len({(r["input"], r["rows_read"], r["rows_encoded"], r["errors"]) for r in runs})
        == len(inputs),
    }


def markdown(result: dict) -> str:
    s, ratio = result["summary"], result["summary"]["ratio_two_over_one"]
    lines = [
        f"# Scale-out: one {result['format']} file, 1 vs 2 SDK processes (--threads=1 each)",
        "",
        f"{result['timestamp']}, {result['machine']}; weights `{result['weights']}`; inputs "
        + ", ".join(f"`{Path(i).name}` ({n} rows)" for i, n in result["input_rows"].items())
        + f"; {result['repeats']} interleaved repeats.",
        "",
        "| configuration | steady rows/s (median) | per repeat | end-to-end rows/s (big) | peak tree RSS MB | parsed share per process (big) | encoded share per batcher (big) |",  # noqa: E501 (a table row)
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in s["configs"].items():
        lines.append(
            f"| {name} | {c['steady_rows_per_s']['median']} | {c['steady_rows_per_s']['values']} | "
            f"{c['end_to_end_rows_per_s_big']} | {c['peak_tree_rss_mb']['max']} | "
            f"{c['parsed_shares_by_process_big']} | {c['encoded_shares_by_batcher_big']} |"
        )
    lines += [
        "",
        f"Ratio 2 / 1 process: steady (of medians) **{ratio['steady_of_medians']}**, median of per-repeat "
        f"ratios {ratio['median_of_per_repeat']}, end to end on the big input {ratio['end_to_end_big']}. "
        f"Counts equal across configurations: {s['counts_equal_across_configs']}.",
        "",
        "Steady rate = (rows_big - rows_small) / (wall_big - wall_small): start-up, model loading and "
        "planning cancel out.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", help="format of the built inputs")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the small built input (the big one has twice)")
    parser.add_argument("--input", action="append", type=Path, default=None,
                        help="use these files instead of built ones (two of different sizes for a steady rate)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default=None, help=f"default: ../shared's {X1_0_STEM}")
    parser.add_argument("--shared", help="reference material (default: $OSNET_SHARED_DIR or ../shared)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--tag", default="scaleout", help="results are written to <out>/<tag>_latest.json/.md")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--tiny", action="store_true", help="smoke run: 40/80 rows, bundled weights, 1 repeat")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.repeats = 40, 1
        from weights import BUNDLED_WEIGHTS

        args.weights = str(BUNDLED_WEIGHTS)
    shared = find_shared(args.shared)
    if args.weights is None:
        if shared is None:
            parser.error("needs ../shared (or --shared, or --weights): the x1.0 weights and the seed table")
        args.weights = str(checkpoint_path(shared, X1_0_STEM))
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        workdir = Path(tmp)
        if args.input:
            inputs = list(args.input)
        else:
            seeds, _ = seed_rows(shared)
            suffix = ".csv" if args.format == "csv" else ".parquet"
            inputs = [build_input(workdir / f"rows{n}{suffix}", n, seeds, args.format) for n in (args.rows, 2 * args.rows)]
            log(f"built {[str(i) for i in inputs]}")
        runs = []
        for repeat in range(args.repeats):
            for path in inputs:
                for config in CONFIGS:
                    label = f"{config}-{path.stem}-r{repeat}"
                    run = run_pipeline(path, config, args.weights, workdir, label, args.timeout)
                    run["repeat"] = repeat
                    runs.append(run)
                    log(f"{label}: {run['wall_s']:.1f}s, {run['rows_encoded']} encoded, "
                        f"peak {run['peak_tree_rss_mb']:.0f} MB, shares {run['parsed_shares_by_process']}")
        input_rows = {str(p): next(r["rows_read"] for r in runs if r["input"] == str(p)) for p in inputs}
        inputs = sorted(inputs, key=lambda p: input_rows[str(p)])
        result = {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.python_version()}",
            "format": args.format if not args.input else inputs[0].suffix.lstrip("."),
            "weights": args.weights, "repeats": args.repeats, "input_rows": input_rows,
            "summary": summarise(runs, inputs, args.repeats), "runs": runs,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}_latest.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{args.tag}_latest.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
