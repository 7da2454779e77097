"""``python -m pipeline.evaluate`` and ``python -m pipeline.compare`` as a user runs them.

Runs: one real job on the seed table (``python -m pipeline``, once for the module), and features
outputs written by hand from the reference features (Parquet and CSV) and perturbed copies.
Expected figures come from tests/reid_reference.py, which shares no code with the tools.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from testkit.reference import read_labels
from tests.reid_reference import (
    retrieval_figures,
    seed_columns,
    write_csv_run,
    write_parquet_run,
)

REFERENCE = "osnet_x0_25_msmt17"
KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP", "queries", "identities")


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def rows(seed_table):
    return seed_columns(seed_table)


@pytest.fixture(scope="module")
def reference(reference_dir, real_crops_dir, rows):
    """Reference features in the seed table's row order, and labels from labels.csv."""
    data = np.load(reference_dir / f"{REFERENCE}.npz")
    by_file = {str(f): v for f, v in zip(data["files"], data["features"])}
    labels = read_labels(real_crops_dir)
    features = np.stack([by_file[r["file"]] for r in rows])
    ids = np.array([labels[r["file"]][0] for r in rows])
    cameras = np.array([labels[r["file"]][1] for r in rows])
    return features, ids, cameras


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, rows, reference):
    return write_parquet_run(tmp_path_factory.mktemp("reference_run"), rows, reference[0], shards=3)


@pytest.fixture(scope="module")
def job_run(tmp_path_factory, seed_table, shared_weights_dir):
    """The job itself on the seed table, as README runs it."""
    out = tmp_path_factory.mktemp("job") / "out"
    done = tool("pipeline", "--input", str(seed_table), "--output", str(out),
                "--weights", str(shared_weights_dir / f"{REFERENCE}.pth"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _evaluate(run, tmp_path, *extra):
    json_path = tmp_path / "figures.json"
    done = tool("pipeline.evaluate", "--features", str(run), "--id_column", "track_id",
                "--camera_column", "camera", "--json", str(json_path), *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(json_path.read_text())


def test_evaluate_reference_features(reference_run, reference, tmp_path):
    features, ids, cameras = reference
    done, figures = _evaluate(reference_run, tmp_path, "--query_cameras", "01")
    expected = retrieval_figures(features, ids, cameras, cameras == "01")
    assert {k: figures[k] for k in KEYS} == pytest.approx(expected, abs=1e-9)
    assert (round(figures["rank1"], 3), round(figures["mAP"], 3)) == (0.606, 0.524)
    header, values = done.stdout.splitlines()[1:3]
    assert header.split() == ["rank-1", "rank-5", "rank-10", "mAP", "mINP", "queries", "identities"]
    assert values.split()[:2] == [f"{expected['rank1']:.4f}", f"{expected['rank5']:.4f}"]
    assert values.split()[-2:] == ["99", "33"]


def test_evaluate_every_camera_queries_by_default(reference_run, reference, tmp_path):
    features, ids, cameras = reference
    _, figures = _evaluate(reference_run, tmp_path)
    expected = retrieval_figures(features, ids, cameras)
    assert {k: figures[k] for k in KEYS} == pytest.approx(expected, abs=1e-9)
    assert figures["queries"] == 198


def test_evaluate_a_csv_run(tmp_path, rows, reference):
    features, ids, cameras = reference
    csv_run = write_csv_run(tmp_path / "csv_run", rows, features)
    _, figures = _evaluate(csv_run, tmp_path, "--query_cameras", "02")
    expected = retrieval_figures(features, ids, cameras, cameras == "02")
    assert {k: figures[k] for k in KEYS} == pytest.approx(expected, abs=1e-9)


def test_evaluate_the_job_output(job_run, reference, tmp_path):
    """The job's own features rank the crops as torchreid's do."""
    features, ids, cameras = reference
    _, figures = _evaluate(job_run, tmp_path, "--query_cameras", "01")
    expected = retrieval_figures(features, ids, cameras, cameras == "01")
    assert figures["rank1"] == pytest.approx(expected["rank1"], abs=0.011)  # at most one query flips
    assert figures["mAP"] == pytest.approx(expected["mAP"], abs=0.003)
    assert (figures["queries"], figures["identities"]) == (99, 33)


@pytest.mark.parametrize("args, message", [
    (["--id_column", "person", "--camera_column", "camera"], "no column 'person' for --id_column"),
    (["--id_column", "track_id", "--camera_column", "camera", "--query_cameras", "07"],
     "no row has a camera in --query_cameras"),
])
def test_evaluate_refuses_bad_options(reference_run, args, message):
    done = tool("pipeline.evaluate", "--features", str(reference_run), *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_refuses_a_folder_without_features(tmp_path):
    done = tool("pipeline.evaluate", "--features", str(tmp_path), "--id_column", "a", "--camera_column", "b")
    assert done.returncode == 2 and "not a run's output directory" in done.stderr, done.stderr


def _compare(a, b, tmp_path, *extra):
    json_path = tmp_path / "compare.json"
    done = tool("pipeline.compare", str(a), str(b), "--json", str(json_path), *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(json_path.read_text())


def test_compare_a_run_with_itself(job_run, tmp_path):
    done, figures = _compare(job_run, job_run, tmp_path)
    assert figures["rows"] == 198 and figures["only_in_a"] == figures["only_in_b"] == 0
    assert figures["min_cosine"] == figures["median_cosine"] == figures["p1_cosine"] == 1.0
    assert figures["max_abs"] == 0.0 and figures["identical_rows"] == 198
    assert figures["key"] == ["frame", "track_id", "camera", "file"]
    assert "only in A 0, only in B 0" in done.stdout


def test_compare_gives_the_perturbation(tmp_path, rows, reference):
    features = reference[0]
    rng = np.random.default_rng(7)
    moved = features.copy()
    noise = rng.normal(0, 0.05, size=(10, features.shape[1])).astype(np.float32)
    moved[20:30] += noise
    a = write_parquet_run(tmp_path / "a", rows[:190], features[:190])
    extra = [dict(r, frame=r["frame"] + 1000) for r in rows[:3]]  # rows only B has
    b = write_csv_run(tmp_path / "b", rows[5:] + extra, np.concatenate([moved[5:], features[:3]]))
    done, figures = _compare(a, b, tmp_path, "--key", "frame", "file")
    both = np.arange(5, 190)
    expected_cos = [float(np.dot(features[i], moved[i]) / (np.linalg.norm(features[i]) * np.linalg.norm(moved[i])))
                    for i in both]
    # A: rows 0-189; B: rows 5-197 and 3 of its own
    assert figures["rows"] == 185 and figures["only_in_a"] == 5 and figures["only_in_b"] == 8 + 3
    assert figures["min_cosine"] == pytest.approx(min(expected_cos), abs=1e-7)
    assert figures["max_abs"] == pytest.approx(float(np.abs(moved[20:30] - features[20:30]).max()), abs=1e-6)
    assert figures["median_cosine"] == 1.0 and figures["identical_rows"] == 175
    assert figures["key"] == ["frame", "file"]


def test_compare_the_job_with_torchreid_and_rank_both(job_run, reference_run, reference, tmp_path):
    features, ids, cameras = reference
    done, figures = _compare(job_run, reference_run, tmp_path, "--id_column", "track_id",
                             "--camera_column", "camera", "--query_cameras", "01")
    assert figures["rows"] == 198 and figures["min_cosine"] >= 0.99999
    assert figures["max_abs"] <= 1e-3
    expected = retrieval_figures(features, ids, cameras, cameras == "01")
    assert figures["b"]["rank1"] == pytest.approx(expected["rank1"], abs=1e-9)
    assert figures["b"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert figures["a"]["mAP"] == pytest.approx(expected["mAP"], abs=0.003)
    assert "rank-1" in done.stdout


def test_compare_refuses_keys_that_repeat(reference_run, tmp_path):
    done = tool("pipeline.compare", str(reference_run), str(reference_run), "--key", "camera")
    assert done.returncode == 2 and "repeat the key ['camera']" in done.stderr, done.stderr


def test_osnet_beam_dispatches_tools_and_the_job(reference_run):
    done = tool("pipeline.cli", "evaluate", "--features", str(reference_run), "--id_column", "track_id",
                "--camera_column", "camera", "--query_cameras", "01")
    assert done.returncode == 0 and "0.6061" in done.stdout, done.stderr[-2000:]
    done = tool("pipeline.cli", "--help")
    assert done.returncode == 0 and "--output_format" in done.stdout


def _in_terminal(args: list[str]) -> tuple[int, str]:
    """Run a command with stdout and stderr on a pseudo-terminal; its exit status and output."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process exited
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return process.wait(timeout=600), b"".join(chunks).decode("utf-8", "replace")


# slow: 21M pairs, twice; test_reid_metrics.py::test_progress_counts_every_query_once checks the
# progress the bar is drawn from
@pytest.mark.slow
def test_evaluate_shows_a_progress_bar_on_a_terminal_only(tmp_path):
    n = 4600  # 21M (query, gallery) pairs: over the progress threshold, seconds to run
    rng = np.random.default_rng(3)
    rows = [{"frame": i, "track_id": i // 4, "camera": f"{i % 3:02d}", "file": f"f{i}"} for i in range(n)]
    run = write_parquet_run(tmp_path / "big", rows, rng.normal(size=(n, 8)).astype(np.float32))
    args = ["--features", str(run), "--id_column", "track_id", "--camera_column", "camera"]
    status, shown = _in_terminal([sys.executable, "-m", "pipeline.evaluate", *args])
    assert status == 0, shown[-2000:]
    assert re.search(rf"evaluate: +100%\|.*\| {n}/{n} ", shown), shown[-2000:]
    quiet = tool("pipeline.evaluate", *args)
    assert quiet.returncode == 0 and "%|" not in quiet.stderr + quiet.stdout
