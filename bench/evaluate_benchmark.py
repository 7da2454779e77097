"""Evaluate's retrieval maths side by side: ours (full protocol) vs a top-10 numpy baseline vs FAISS.

``python bench/evaluate_benchmark.py [--rows N] [--repeats R] [--json PATH]`` from the repository
root. Synthetic L2-normalised 512-d features (identities of 8 crops over 6 cameras). Each
configuration runs in its own process, so its peak RSS above the loaded features is its own:

- ``reid_metrics``: ``pipeline.reid_metrics.evaluate_retrieval``: rank-k, mAP and mINP of every
  query against the other cameras, in bounded memory (what ``evaluate`` runs);
- ``numpy_top10``: the baseline a user would write: chunked float32 matrix products and
  ``argpartition`` top-10 per query (enough for rank-k only, not for mAP);
- ``faiss_top10``: FAISS ``IndexFlatIP`` exact top-10 search (if ``faiss`` is importable; it
  is not a dependency); like the baseline it gives rank-k only.

Reported: median seconds, queries/s, ratio to the baseline, peak RSS above the features.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # this checkout's pipeline, wherever it is installed
CONFIGS = ("numpy_top10", "reid_metrics", "faiss_top10")


def make_features(rows: int, dim: int = 512, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.arange(rows) // 8
    centres = rng.normal(size=(ids.max() + 1, dim)).astype(np.float32)
    features = centres[ids] + rng.normal(0, 3.0, size=(rows, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features, ids, rng.integers(0, 6, rows)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(config: str, rows: int) -> dict:
    """One timed run in this process: seconds, and peak RSS above the features (MiB)."""
    features, ids, cameras = make_features(rows)
    if config == "faiss_top10":
        if importlib.util.find_spec("faiss") is None:
            return {"skipped": "faiss not importable"}
    if config == "reid_metrics":
        from pipeline.reid_metrics import evaluate_retrieval  # import before the baseline RSS
    base = _rss_mib()
    started = time.perf_counter()
    if config == "reid_metrics":
        evaluate_retrieval(features, ids, cameras)
    elif config == "numpy_top10":
        chunk = 1024
        for q0 in range(0, rows, chunk):
            sims = features[q0:q0 + chunk] @ features.T
            sims[cameras[q0:q0 + chunk, None] == cameras[None, :]] = -np.inf
            np.argpartition(-sims, 10, axis=1)[:, :10]
    else:
        import faiss

        index = faiss.IndexFlatIP(features.shape[1])
        index.add(features)
        # other cameras only: search a few more than 10 and drop same-camera hits (approximate
        # the masking cost generously in FAISS's favour: 32 candidates)
        index.search(features, 32)
    return {"seconds": time.perf_counter() - started, "peak_rss_above_features_mib": _rss_mib() - base}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.rows)))
        return 0
    results: dict[str, dict] = {}
    for _repeat in range(args.repeats):
        for config in CONFIGS:  # interleaved, so a busy spell hits every configuration
            done = subprocess.run([sys.executable, __file__, "--one", config, "--rows", str(args.rows)],
                                  cwd=REPO_ROOT, capture_output=True, text=True, check=True)
            results.setdefault(config, {"runs": []})["runs"].append(json.loads(done.stdout.splitlines()[-1]))
    baseline = None
    lines = [f"rows={args.rows} (every row queries the other cameras), {args.repeats} repeats, medians",
             "config         seconds  queries/s  vs numpy_top10  peak RSS above features (MiB)"]
    for config in CONFIGS:
        runs = results[config]["runs"]
        if "skipped" in runs[0]:
            results[config] = {"skipped": runs[0]["skipped"]}
            lines.append(f"{config:<14} skipped: {runs[0]['skipped']}")
            continue
        seconds = statistics.median(r["seconds"] for r in runs)
        rss = statistics.median(r["peak_rss_above_features_mib"] for r in runs)
        baseline = baseline or seconds
        results[config].update(median_seconds=seconds, queries_per_s=args.rows / seconds,
                               ratio_to_numpy_top10=baseline / seconds, median_peak_rss_mib=rss)
        lines.append(f"{config:<14} {seconds:7.2f}  {args.rows / seconds:9.0f}  {baseline / seconds:13.2f}x"
                     f"  {rss:8.0f}")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "repeats": args.repeats,
                                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
