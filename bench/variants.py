#!/usr/bin/env python
"""What the pipeline costs around the model: end to end with the real model and with a null one.

    python bench/variants.py base null                      # pipeline end to end, steady rows/s
    python bench/variants.py base "base:--batch_size=16"    # ...the same code with other pipeline options

Variants, each optionally followed by ``:--pipeline_option=value,...``:

- ``base``: the code as it is;
- ``null``: a model that returns zeros at once (patched into ``model.engine`` in the child
  process; nothing in model/ changes): what everything around the network costs (reading,
  decoding, resizing, Beam, writing).

The other experiments this script used to patch in are now the product's behaviour or were
measured and dropped (bench/README.md, "variants.py"); compare against an older revision with
``python bench/run_benchmark.py --baseline-rev REV`` instead. Each run is its own process
(``bench.harness``), repeats are interleaved and wait for a quiet machine. Results are printed
(median, min, max) and written to ``--out``/variants_e2e.json.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == BENCH_DIR:
    sys.path.pop(0)
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))

from bench.checkpoints import BENCH_ARCH, bench_weights  # noqa: E402
from bench.harness import NOISY_CORES, RESULT_MARKER, exit_on_sigterm, log, run_measured, wait_for_quiet  # noqa: E402
from bench.machine import DEFAULT_OUT, find_shared, machine_info  # noqa: E402
from bench.measure import child_e2e  # noqa: E402
from bench.rates import stats  # noqa: E402
from bench.tables import seed_rows, write_bench_table  # noqa: E402

VARIANTS = ("base", "null")


def apply(variant: str) -> None:
    """Patch ``model`` in this process for ``variant``."""
    if variant == "base":
        return
    if variant != "null":
        raise ValueError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
    import numpy as np

    import model.engine as me
    import transforms.inference as ti

    class Null:
        """A backend without a network: zeros of the right shape, at once."""

        name, device = "onnxruntime", "cpu"

        def __call__(self, batch):
            return np.zeros((len(batch), 512), np.float32)

    me.runtime_for = lambda *args, **kwargs: Null()  # a runtime built from the module
    ti.runtime_for_graph = lambda *args, **kwargs: Null()  # ONNX Runtime on the exported graph


def summarise(runs: dict[str, list]) -> dict[str, dict]:
    """Steady rows/s per variant over the runs during which the machine was quiet (all if none was)."""
    summary = {}
    for entry, results in runs.items():
        quiet = [r for r in results if r["foreign_cores"] <= NOISY_CORES] or results
        summary[entry] = {**stats([r["steady_rows_per_s"] for r in quiet if r["steady_rows_per_s"]]),
                          "noisy_runs_left_out": len(results) - len(quiet),
                          "peak_rss_mb": max(r["ru_maxrss_mb"] for r in results)}
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", default=list(VARIANTS),
                        help="variants, each optionally followed by :--pipeline_option=value,...")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1188)
    parser.add_argument("--arch", default=BENCH_ARCH)
    parser.add_argument("--weights")
    parser.add_argument("--shared")
    parser.add_argument("--quiet-wait", type=float, default=300.0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variants[:1] == ["e2e"]:  # the word the older command line wanted first
        args.variants = args.variants[1:] or list(VARIANTS)
    unknown = [v for v in args.variants if v.partition(":")[0] not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; variants: {', '.join(VARIANTS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        variant, spec_path = args.child
        apply(variant)
        print(RESULT_MARKER + json.dumps(child_e2e(json.loads(Path(spec_path).read_text()))), flush=True)
        return 0
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # unwind: child killed, files removed
    work = Path(tempfile.mkdtemp(prefix="osnet-variants-"))
    try:
        return _measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(args: argparse.Namespace, work: Path) -> int:
    shared = find_shared(args.shared)
    seeds, source = seed_rows(shared)
    weights, weights_source = bench_weights(shared, args.arch, args.weights, work)
    table = work / "table.csv"
    write_bench_table(table, args.rows, seeds)
    log(f"e2e: {args.arch} ({weights_source}), {source}")
    runs: dict[str, list] = {}
    for repeat in range(args.repeats):
        for entry in args.variants if repeat % 2 == 0 else args.variants[::-1]:
            variant, _, options = entry.partition(":")
            spec = {"table": str(table), "weights": weights, "arch": args.arch, "rows": args.rows,
                    "output": str(work / f"out_{repeat}"), "pipeline_args": [o for o in options.split(",") if o]}
            spec_path = work / "spec.json"
            spec_path.write_text(json.dumps(spec))
            quiet = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else {}
            label = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{entry}_{repeat}")
            measured = run_measured([sys.executable, str(Path(__file__).resolve()), "--child", variant, str(spec_path)],
                                    label, work)
            result = measured["result"]
            if result is None:
                raise RuntimeError(f"{label}: no result line in its output")
            result.update(foreign_cores=round(measured["foreign_cores"], 3), **quiet)
            runs.setdefault(entry, []).append(result)
            log(f"  {entry}: {result['steady_rows_per_s'] or 0:.1f} rows/s steady "
                f"(foreign load {measured['foreign_cores']:.2f} cores)")
            shutil.rmtree(work / f"out_{repeat}", ignore_errors=True)
    summary = summarise(runs)
    for entry, s in summary.items():
        left_out = f", {s['noisy_runs_left_out']} noisy run(s) left out" if s["noisy_runs_left_out"] else ""
        print(f"{entry:45s} {s['median'] or 0:7.1f} rows/s  ({s['min'] or 0:.1f}-{s['max'] or 0:.1f}){left_out}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv), "arch": args.arch,
              "weights": weights_source, "crops": source, "machine": machine_info(), "summary": summary, "runs": runs}
    (out / "variants_e2e.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
