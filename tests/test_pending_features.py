"""Features started on the network's threads and collected later (model/runtimes/cpu.py): what lets
the pipeline's thread prepare the next batch while the network runs this one."""
from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.runtimes.cpu import PendingFeatures, network_pool, submit_crops

FEATURE_DIM = 512
REPO_ROOT = Path(__file__).resolve().parent.parent


def _features_of(item: int) -> np.ndarray:
    """A (1, 512) result that says which item it came from."""
    return np.full((1, FEATURE_DIM), float(item), np.float32)


@pytest.fixture(scope="module")
def pool():
    pool = network_pool(2, "test-pending")
    yield pool
    pool.shutdown()


def _block(pool, workers: int = 2) -> threading.Event:
    """Every worker of ``pool`` held until the returned event is set."""
    release, started = threading.Event(), threading.Barrier(workers + 1)

    def hold():
        started.wait()
        release.wait()

    for _ in range(workers):
        pool.submit(hold)
    started.wait()
    return release


def test_submit_returns_before_the_work_is_done_and_result_waits_for_it(pool):
    release = _block(pool)
    pending = submit_crops(pool, _features_of, [3, 1, 2])
    assert not pending.done()  # nothing could run: the caller got it back at once
    release.set()
    np.testing.assert_array_equal(pending.result()[:, 0], [3, 1, 2])
    assert pending.done()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1000, 1000), max_size=40))
def test_results_are_in_input_order_whatever_order_the_threads_finish(pool, items):
    def jittered(item):
        threading.Event().wait(0.0005 * (item % 3))  # later items often finish first
        return _features_of(item)

    out = submit_crops(pool, jittered, items).result()
    assert out.shape == (len(items), FEATURE_DIM) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], np.asarray(items, np.float32))


def test_a_failed_item_fails_the_batch_every_time_it_is_asked(pool):
    def run(item):
        if item == 2:
            raise RuntimeError(f"network failed on item {item}")
        return _features_of(item)

    pending = submit_crops(pool, run, [1, 2, 3])
    for _ in range(2):
        with pytest.raises(RuntimeError, match="item 2"):
            pending.result()


def test_pickling_a_started_batch_does_not_wait_and_resolves_only_in_its_process(pool, tmp_path):
    """Beam pickles sampled elements to estimate their size: that must not wait for the network.
    The pickle refers to the object in this process (our own bytes, made just above); another
    process cannot read it and says why."""
    release = _block(pool)
    pending = submit_crops(pool, _features_of, [7, 8])
    data = pickle.dumps(pending)  # returns although nothing can run yet
    assert not pending.done()
    assert pickle.loads(data) is pending
    release.set()
    np.testing.assert_array_equal(pending.result()[:, 0], [7, 8])

    path = tmp_path / "pending.pickle"
    path.write_bytes(data)
    code = (
        "import pickle, sys\n"
        "try:\n"
        "    pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cannot be read by process" in done.stdout and "fused with RunInference" in done.stdout


def test_pickling_a_settled_batch_carries_its_outcome():
    features = np.arange(3 * FEATURE_DIM, dtype=np.float32).reshape(3, FEATURE_DIM)
    copy = pickle.loads(pickle.dumps(PendingFeatures.settled(features)))
    assert copy.done()
    np.testing.assert_array_equal(copy.result(), features)
    failed = pickle.loads(pickle.dumps(PendingFeatures.settled(error=ValueError("bad crop"))))
    with pytest.raises(ValueError, match="bad crop"):
        failed.result()


def test_settled_features_and_failures():
    features = np.arange(2 * FEATURE_DIM, dtype=np.float64).reshape(2, FEATURE_DIM)
    settled = PendingFeatures.settled(features)
    assert settled.done() and settled.result().dtype == np.float32
    np.testing.assert_array_equal(settled.result(), features.astype(np.float32))
    with pytest.raises(KeyError):
        PendingFeatures.settled(error=KeyError("x")).result()
    for wrong in ({}, {"features": features, "error": KeyError("x")}):
        with pytest.raises(ValueError, match="not both"):
            PendingFeatures.settled(**wrong)


def test_nothing_to_run_is_an_empty_result(pool):
    empty = submit_crops(pool, _features_of, [])
    assert empty.done() and empty.result().shape == (0, FEATURE_DIM)


def test_the_engine_hands_crops_to_its_threads_and_returns():
    """On CPU with ONNX Runtime, FeatureEngine.submit_crops only queues the crops: the features
    it later gives are encode_crops' own, bit for bit; a bad crop is refused at once."""
    from model.checkpoint import load_osnet
    from model.engine import FeatureEngine
    from model.policy import plan_here
    from weights import BUNDLED_WEIGHTS

    module = load_osnet(BUNDLED_WEIGHTS)
    engine = FeatureEngine(module, plan_here("onnxruntime", "cpu"))
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (int(h), 40, 3), dtype=np.uint8) for h in rng.integers(60, 200, 6)]
    expected = engine.encode_crops(crops)
    release = _block(engine.runtime._pool, engine.runtime.threads)
    pending = engine.submit_crops(crops)
    assert not pending.done()
    release.set()
    np.testing.assert_array_equal(pending.result(), expected)
    with pytest.raises(ValueError, match="uint8"):
        engine.submit_crops([crops[0], crops[1].astype(np.float32)])

    eager = FeatureEngine(module, plan_here("torch", "cpu"))  # no pool of its own: computed at once
    settled = eager.submit_crops(crops)
    assert settled.done() and settled.result().shape == (6, FEATURE_DIM)
