#!/usr/bin/env python
"""Throughput and memory benchmark of osnet-beam (issue 6); see bench/README.md.

Two modes:

``--mode bench`` (default, about 6 minutes here): one table of N crops (the real crops of
``../shared`` replicated, else synthetic ones) measured, side by side in one invocation, by

- ``original_loop``: the original tool's per-crop loop: Pillow resize -> tensor -> normalise ->
  ``model(1 crop)`` in torch eager, one crop per forward pass;
- ``model_only``: each backend (torch eager, ONNX Runtime) on preprocessed batches of several
  sizes (no decoding, no resizing: the network alone);
- ``e2e``: the whole pipeline (CSV in, Parquet features out) on Beam's DirectRunner. Its
  steady-state rate is timed from the first encoded row to the last one (see "Method" in
  bench/README.md); start-up (imports, checks, model load, first batch) and the tail (closing
  and renaming the output shards) are reported apart.

Every measurement runs in its own subprocess, so its peak RSS is its own; the repeats of the
different modes are interleaved (loop, torch, onnxruntime, e2e, loop, ...) so that a change of
machine load hits every mode alike, and ratios are also given per repeat ("paired"). Results go
to ``--out`` (default bench/results): ``latest.json``, ``latest.png``, ``latest.md``.

``--mode scale``: 100k rows (about 10% bad rows of every kind in testkit/bad_cells.py that a CSV
file can hold, plus broken CSV records and bad column values) in CSV shards, through the
pipeline's command line with the bundled osnet_x0_25 weights; reports wall time and the peak RSS
of the whole process tree, and checks that every row came out exactly once: as a feature row, or
as an error row with its reason and its original data. Results: ``scale_latest.json``/``.png``.

``--mode all`` runs both. ``--tiny`` shrinks everything to seconds (the smoke test uses it).

``--baseline-rev REV`` (mode bench): the model-only and end-to-end children also run from a
temporary checkout of REV, alternately with this checkout's, measured by the same code with the
same interpreter; the report adds medians per tree and the ratio new / baseline.

The work is in modules of ``bench/``: ``harness`` (child processes, watching, quiet machine),
``child`` (a child's entry point), ``measure`` (the children's bodies), ``rates`` (statistics,
steady rates), ``tables`` (input tables), ``checkpoints`` (which weights), ``throughput`` (mode
bench), ``baseline`` (the baseline checkout and comparison), ``scale`` (mode scale), ``report``
(markdown, plots, README), ``machine`` (paths, machine, revision). This file is the command line.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

if not __package__:  # run as a script
    import _as_package  # noqa: F401

from bench import baseline, report  # noqa: E402
from bench.checkpoints import BENCH_ARCH, DEFAULT_MODELS, MODELS  # noqa: E402
from bench.harness import NOISY_CORES, exit_on_sigterm, log  # noqa: E402
from bench.machine import DEFAULT_OUT, find_shared, git_revision, machine_info  # noqa: E402
from bench.measure import BACKEND_VARIANTS, DEFAULT_BACKENDS  # noqa: E402
from bench.scale import run_scale  # noqa: E402
from bench.throughput import run_bench  # noqa: E402


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    words = lambda text: [v for v in text.split(",") if v]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("bench", "scale", "all"), default="bench")
    parser.add_argument("--shared", help="reference material (default: $OSNET_SHARED_DIR or ../shared)")
    parser.add_argument("--out", help=f"results folder (default: {DEFAULT_OUT}; with --tiny a temporary one)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run: few crops, 1 repeat, osnet_x0_25")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", type=words, default=None,
                        help=f"models of mode bench, comma-separated, from {', '.join(MODELS)} (default: all; "
                        "x1.0 weights from ../shared, else a random initialisation)")
    parser.add_argument("--arch", default=BENCH_ARCH, help="instead of --models: one model of this architecture")
    parser.add_argument("--weights", help="instead of --models: these weights (default: ../shared's, else random init)")
    parser.add_argument("--loop-crops", type=int, default=120, help="crops per repeat of the original loop")
    parser.add_argument("--model-images", type=int, default=64, help="images per batch size per repeat, model only")
    parser.add_argument("--batch-sizes", type=ints, default=[1, 8, 16, 32, 64])
    parser.add_argument("--backends", type=words, default=DEFAULT_BACKENDS,
                        help=f"model-only variants, from {', '.join(BACKEND_VARIANTS)} (openvino_bf16 is skipped on "
                        "CPUs without AVX512-BF16/AMX)")
    parser.add_argument("--threads", type=int, default=None, help="backend threads, model only (default: the backend's)")
    parser.add_argument("--e2e-rows", type=int, default=1188, help="rows of the end-to-end table")
    parser.add_argument("--e2e-arg", action="append", default=[],
                        help="extra pipeline option for the end-to-end run, e.g. --e2e-arg=--batch_size=16")
    parser.add_argument("--stage-rows", type=int, default=198, help="rows for the per-stage costs")
    parser.add_argument("--scale-rows", type=int, default=100_000)
    parser.add_argument("--scale-bad-fraction", type=float, default=0.10)
    parser.add_argument("--scale-shards", type=int, default=8)
    parser.add_argument("--scale-large-copies", type=int, default=3, help="copies of each bad cell over 64 KB")
    parser.add_argument("--scale-huge-copies", type=int, default=1, help="copies of the 50 MB cell")
    parser.add_argument("--scale-arch", default="osnet_x0_25")
    parser.add_argument("--scale-weights", help="default: the bundled osnet_x0_25 weights")
    parser.add_argument("--scale-arg", action="append", default=[], help="extra pipeline option for mode scale")
    parser.add_argument("--scale-timeout", type=float, default=3600.0)
    parser.add_argument("--quiet-wait", type=float, default=90.0,
                        help="before each measurement, wait up to this many seconds for other processes to leave "
                        f"the CPU (below {NOISY_CORES} cores busy); 0: do not wait")
    parser.add_argument("--baseline-rev", metavar="REV",
                        help="mode bench: also run the model-only and end-to-end children from a temporary checkout "
                        "of this git revision, alternately with this checkout's; report both and new / baseline")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary folder (tables, logs)")
    args = parser.parse_args(argv)
    unknown = [m for m in (args.models or []) if m not in MODELS] + [b for b in args.backends if b not in BACKEND_VARIANTS]
    if args.baseline_rev and args.mode == "scale":
        parser.error("--baseline-rev compares mode bench's measurements: use --mode bench or all")
    if unknown:
        parser.error(f"unknown model or backend {unknown}; models: {list(MODELS)}, backends: {list(BACKEND_VARIANTS)}")
    if args.models is None and args.arch == BENCH_ARCH and not args.weights and not args.tiny:
        args.models = DEFAULT_MODELS
    if args.tiny:
        defaults = parser.parse_args([])
        tiny = {"repeats": 1, "quiet_wait": 0.0, "loop_crops": 4, "model_images": 8, "batch_sizes": [1, 4], "e2e_rows": 100,
                "stage_rows": 8, "scale_rows": 400, "scale_shards": 2, "scale_large_copies": 1, "scale_huge_copies": 0}
        for name, value in tiny.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
        if args.arch == BENCH_ARCH and not args.weights:
            args.arch = "osnet_x0_25"
    return args



def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    shared = find_shared(args.shared)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="osnet-bench-tiny-")) if args.tiny else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="osnet-bench-"))
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "args": vars(args),
        "shared": str(shared) if shared else None,
        "machine": machine_info(),
        "git": git_revision(),
        "loadavg_at_start": os.getloadavg(),
    }
    log(f"results to {out}; temporary files in {workdir}")
    default_out = out.resolve() == DEFAULT_OUT.resolve() and not args.tiny
    try:
        if args.mode in ("bench", "all"):
            with (baseline.checkout(args.baseline_rev) if args.baseline_rev else contextlib.nullcontext()) as tree:
                if tree:
                    log(f"baseline {args.baseline_rev} = {tree['commit'][:10]}, checked out in {tree['path']}")
                models = run_bench(args, shared, workdir, baseline=tree)
            result = {"meta": meta, "bench": next(iter(models.values())), "models": models}
            (out / "latest.json").write_text(json.dumps(result, indent=1))
            markdown = report.bench_markdown(result)
            (out / "latest.md").write_text(markdown)
            report.bench_plot(result, out / "latest.png")
            if default_out:
                report.update_readme(markdown, report.README_BEGIN, report.README_END)
            print(markdown, flush=True)
        if args.mode in ("scale", "all"):
            result = {"meta": meta, "scale": run_scale(args, shared, workdir)}
            (out / "scale_latest.json").write_text(json.dumps(result, indent=1))
            markdown = report.scale_markdown(result)
            (out / "scale_latest.md").write_text(markdown)
            report.scale_plot(result, out / "scale_latest.png")
            if default_out:
                report.update_readme(markdown, report.README_BEGIN.replace("latest", "scale"), report.README_END.replace("latest", "scale"))
            print(markdown, flush=True)
            if not result["scale"]["verification"]["ok"]:
                log("scale: the output does not account for every row (see scale_latest.json)")
                return 1
    finally:
        if args.keep_temp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
