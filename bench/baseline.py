"""A baseline checkout for side-by-side runs (``--baseline-rev REV``), and the comparison.

The baseline tree is ``git archive REV`` unpacked into a temporary folder: the committed files of
that revision exactly, nothing registered in the repository (no worktree entry to clean up if the
benchmark is killed), removed when the run ends. Both trees are measured by this checkout's
measuring code (``bench/child.py``), with the same interpreter and packages; only the product
(``model``, ``transforms``, ``pipeline``, ``weights``) differs.
"""
from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from bench.machine import REPO_ROOT
from bench.rates import paired, stats


def resolve(rev: str, repo: Path = REPO_ROOT) -> str:
    """The commit ``rev`` names (ValueError if none)."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=repo,
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0 or not done.stdout.strip():
        raise ValueError(f"--baseline-rev {rev!r}: not a commit of {repo}")
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(rev: str, repo: Path = REPO_ROOT) -> Iterator[dict[str, Any]]:
    """``{"rev", "commit", "path"}`` of a temporary copy of ``rev``'s tree, removed afterwards."""
    commit = resolve(rev, repo)
    folder = Path(tempfile.mkdtemp(prefix="osnet-bench-baseline-"))
    try:
        archive = subprocess.Popen(["git", "archive", "--format=tar", commit], cwd=repo, stdout=subprocess.PIPE)
        unpack = subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, capture_output=True)
        archive.stdout.close()
        if archive.wait() != 0 or unpack.returncode != 0:
            raise RuntimeError(f"could not unpack {commit} into {folder}: {unpack.stderr.decode()[-500:]}")
        yield {"rev": rev, "commit": commit, "path": folder.resolve()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compare(new: Sequence[Optional[float]], old: Sequence[Optional[float]]) -> dict[str, Any]:
    """Medians per tree and new / baseline: of the medians, and repeat by repeat (paired)."""
    pairs = [(n, o) for n, o in zip(new, old) if n and o]
    new, old = [v for v in new if v], [v for v in old if v]
    ratio = statistics.median(new) / statistics.median(old) if new and old else None
    return {"new": stats(new), "baseline": stats(old), "ratio_new_over_baseline": ratio,
            "paired": paired([n for n, _ in pairs], [o for _, o in pairs])}


def summarise(baseline: dict[str, Any], runs: dict[str, list], baseline_runs: dict[str, list],
              backends: Sequence[str], batch_sizes: Sequence[int]) -> dict[str, Any]:
    """The model-only and end-to-end rates of this checkout against the baseline's, measured alternately."""
    def values(source: dict[str, list], key: str, pick) -> list:
        return [pick(run["result"]) for run in source[key]]

    model = {backend: {str(size): compare(values(runs, f"model_{backend}", lambda r: r["img_per_s"][str(size)]),
                                          values(baseline_runs, f"model_{backend}", lambda r: r["img_per_s"][str(size)]))
                       for size in batch_sizes}
             for backend in backends}
    steady = lambda r: r["steady_rows_per_s"]  # noqa: E731
    return {
        "rev": baseline["rev"],
        "commit": baseline["commit"],
        "what": "the same children from this checkout and from a baseline checkout, alternately; ratio = new / baseline",
        "imported_from": {"new": runs["e2e"][0]["result"]["imported_from"],
                          "baseline": baseline_runs["e2e"][0]["result"]["imported_from"]},
        "model_only_img_per_s": model,
        "e2e_steady_rows_per_s": compare(values(runs, "e2e", steady), values(baseline_runs, "e2e", steady)),
    }
