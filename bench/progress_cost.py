"""What the live progress costs: the pipeline with and without it, side by side, and per row.

    python bench/progress_cost.py [--rows 400] [--repeats 5] [--weights PATH]

Two measurements in one invocation:
- end to end: ``python -m pipeline`` on the same synthetic table with ``--progress off`` and with
  ``--progress lines`` (what a log file or CI gets; the bar reads the same counts), interleaved,
  ``--repeats`` times each; medians of the wall time and their ratio;
- per row: the time :class:`transforms.progress.ProgressWriter` adds to each row (a tight loop of
  the call every counted row makes), against the pipeline's own time per row from the first part.
Writes ``bench/results/progress_cost.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.demo import write_demo_table  # noqa: E402
from transforms.progress import ProgressWriter  # noqa: E402


def _run(table: str, out: str, progress: str, weights: str | None) -> float:
    args = [sys.executable, "-m", "pipeline", "--input", table, "--output", out,
            "--progress", progress, "--progress_interval", "1"]
    if weights:
        args += ["--weights", weights]
    started = time.perf_counter()
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def per_row_cost_s(n: int = 200_000) -> float:
    with tempfile.TemporaryDirectory() as directory:
        writer = ProgressWriter.for_directory(directory)
        started = time.perf_counter()
        for _ in range(n):
            writer.add("features")
        return (time.perf_counter() - started) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", default=None, help="default: the bundled weights")
    parser.add_argument("--results", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        table = os.path.join(work, "table.csv")
        rows = write_demo_table(table, args.rows)
        times: dict[str, list[float]] = {"off": [], "lines": []}
        for repeat in range(args.repeats):
            for mode in ("off", "lines") if repeat % 2 == 0 else ("lines", "off"):
                times[mode].append(_run(table, os.path.join(work, f"{mode}{repeat}"), mode, args.weights))
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    per_row = per_row_cost_s()
    pipeline_per_row = medians["off"] / rows
    result = {
        "rows": rows,
        "repeats": args.repeats,
        "wall_s": times,
        "median_wall_s": medians,
        "with_progress_vs_without": medians["lines"] / medians["off"],
        "progress_cost_per_row_us": per_row * 1e6,
        "pipeline_time_per_row_ms": pipeline_per_row * 1e3,
        "progress_share_of_row_time": per_row / pipeline_per_row,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
    }
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "progress_cost.json"), "w") as stream:
        json.dump(result, stream, indent=2)
    table_md = (
        "| | median wall time (s) |\n|---|---|\n"
        f"| --progress off | {medians['off']:.2f} |\n| --progress lines | {medians['lines']:.2f} |\n\n"
        f"with / without: {result['with_progress_vs_without']:.3f}x; "
        f"progress costs {result['progress_cost_per_row_us']:.2f} us a row, "
        f"{100 * result['progress_share_of_row_time']:.3f}% of the pipeline's "
        f"{result['pipeline_time_per_row_ms']:.2f} ms a row ({rows} rows, {args.repeats} repeats).\n"
    )
    with open(os.path.join(args.results, "progress_cost.md"), "w") as stream:
        stream.write(table_md)
    print(table_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
