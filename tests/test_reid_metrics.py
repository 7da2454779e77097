"""pipeline.reid_metrics against an independent, query-by-query statement of the protocol."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.reid_metrics import evaluate_retrieval, normalise, top_matches
from testkit.reference import read_labels
from tests.reid_reference import retrieval_figures

KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP", "queries", "identities")


@pytest.fixture(scope="module")
def reference(reference_dir, real_crops_dir):
    data = np.load(reference_dir / "osnet_x0_25_msmt17.npz")
    labels = read_labels(real_crops_dir)
    ids = np.array([labels[str(f)][0] for f in data["files"]])
    cameras = np.array([labels[str(f)][1] for f in data["files"]])
    return data["features"], ids, cameras


def _figures(result) -> dict:
    return {k: result.figures()[k] for k in KEYS}


def _assert_same(ours: dict, theirs: dict) -> None:
    for key in KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key


def test_reference_features_camera_01_queries(reference):
    features, ids, cameras = reference
    result = evaluate_retrieval(features, ids, cameras, cameras == "01")
    expected = retrieval_figures(features, ids, cameras, cameras == "01")
    _assert_same(_figures(result), expected)
    # the figures the reference README states for these features
    assert (round(result.rank1, 3), round(result.mAP, 3)) == (0.606, 0.524)
    assert (result.queries, result.identities, result.cameras) == (99, 33, 2)


def test_reference_features_every_query_in_small_blocks(reference):
    features, ids, cameras = reference
    whole = evaluate_retrieval(features, ids, cameras)
    tiny = evaluate_retrieval(features, ids, cameras, block=5, work_bytes=24 * 5 * 7)
    expected = retrieval_figures(features, ids, cameras)
    _assert_same(_figures(whole), expected)
    _assert_same(_figures(tiny), expected)
    assert np.array_equal(np.sort(whole.query_index), np.arange(len(features)))


@st.composite
def _tables(draw):
    n = draw(st.integers(2, 40))
    ids = np.array(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)))
    cameras = np.array(draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n)))
    if draw(st.booleans()):
        # one-hot features: similarities exactly 0 or 1, so ties are exact in any precision
        dims = draw(st.integers(1, 4))
        hot = np.array(draw(st.lists(st.integers(0, dims - 1), min_size=n, max_size=n)))
        features = np.eye(dims, dtype=np.float32)[hot] * draw(st.floats(0.5, 3.0))
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        features = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    mask = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return features, ids, cameras, mask


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=_tables(), block=st.integers(1, 9), chunk=st.integers(1, 50))
def test_any_table_any_blocking_matches_the_protocol(table, block, chunk):
    features, ids, cameras, mask = table
    expected = retrieval_figures(features, ids, cameras, mask)
    result = evaluate_retrieval(features, ids, cameras, mask, block=block, work_bytes=24 * block * chunk)
    if expected["queries"] == 0:
        assert result.queries == 0 and np.isnan(result.mAP)
        return
    _assert_same(_figures(result), expected)
    assert result.queries + result.queries_without_match == int(mask.sum())


def test_identical_features_score_no_better_than_chance():
    ids = np.repeat(np.arange(10), 4)
    cameras = np.tile(["1", "2"], 20)
    result = evaluate_retrieval(np.ones((40, 16), np.float32), ids, cameras)
    assert result.rank1 == 0.0  # every wrong crop ties with the true ones and ranks first
    assert result.mAP == pytest.approx(retrieval_figures(np.ones((40, 16)), ids, cameras)["mAP"])


def test_histograms_count_every_pair(reference):
    features, ids, cameras = reference
    result = evaluate_retrieval(features, ids, cameras, cameras == "01", histogram_bins=40)
    same_pairs = sum(int(np.sum((ids == ids[q]) & (cameras != "01"))) for q in np.flatnonzero(cameras == "01"))
    assert result.same_identity_histogram.sum() == same_pairs == 99 * 3
    assert result.different_identity_histogram.sum() == 99 * 99 - same_pairs
    assert len(result.histogram_edges) == 41


def test_top_matches_are_the_most_similar_other_camera_rows(reference):
    features, ids, cameras = reference
    queries = [0, 17, 150]
    rows, sims = top_matches(features, cameras, queries, k=10, work_bytes=24 * 3 * 13)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    for q, got_rows, got_sims in zip(queries, rows, sims):
        other = np.flatnonzero(cameras != cameras[q])
        expected = other[np.argsort(-(unit[other] @ unit[q]), kind="stable")[:10]]
        assert list(got_rows) == list(expected)
        assert got_sims == pytest.approx(unit[expected] @ unit[q], abs=1e-5)


def test_normalise_refuses_nan():
    with pytest.raises(ValueError, match="NaN or inf"):
        normalise(np.array([[1.0, np.nan], [1.0, 0.0]]))


def test_progress_counts_every_query_once(reference):
    features, ids, cameras = reference
    done = []
    evaluate_retrieval(features, ids, cameras, cameras == "02", block=16, progress=done.append)
    assert sum(done) == 99 and len(done) >= 99 // 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_figures(reference):
    features, ids, cameras = reference
    on_cpu = evaluate_retrieval(features, ids, cameras, histogram_bins=20)
    on_gpu = evaluate_retrieval(features, ids, cameras, histogram_bins=20, device="cuda")
    _assert_same(_figures(on_gpu), _figures(on_cpu))
    assert np.array_equal(on_gpu.same_identity_histogram, on_cpu.same_identity_histogram)
