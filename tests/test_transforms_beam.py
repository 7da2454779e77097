"""The Beam steps on their own, with TestPipeline and assert_that."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from testkit.bad_cells import bad_cells
from tests.pipeline_helpers import cosine, read_seed_rows, reference_features
from transforms.decode import DecodeCrops
from transforms.errors import ERRORS_TAG
from model.runtimes.cpu import PendingFeatures
from transforms.inference import BATCHES_AHEAD, EncodeCrops, FeatureSlot, OsNetModelHandler
from weights import BUNDLED_WEIGHTS

SMALL_BAD_CELLS = [c for c in bad_cells() if not (isinstance(c.cell, str) and len(c.cell) > 100_000)]


@pytest.fixture(scope="module")
def seed_rows(seed_table):
    return read_seed_rows(seed_table)


def test_decode_crops_splits_good_rows_from_each_kind_of_bad_cell(seed_rows):
    good = seed_rows[:5]
    bad = [{"file": case.name, "feature_vector": case.cell} for case in SMALL_BAD_CELLS]
    assert len({case.reason for case in SMALL_BAD_CELLS}) >= 15
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(good + bad, reshuffle=False)
            | beam.ParDo(DecodeCrops("feature_vector")).with_outputs(ERRORS_TAG, main="crops")
        )
        shapes = out.crops | "Shape" >> beam.Map(
            lambda kv: (kv[0]["file"], list(kv[0]), kv[0]["feature_vector"], kv[1].shape, str(kv[1].dtype))
        )
        # the image cell is dropped once decoded (its key keeps its place); the crop rides on
        assert_that(
            shapes, equal_to([(r["file"], list(r), None, (128, 48, 3), "uint8") for r in good]), label="good"
        )
        reasons = out[ERRORS_TAG] | "Reason" >> beam.Map(
            lambda e: (e["row"]["file"], e["reason"], repr(e["row"]["feature_vector"]))
        )
        assert_that(
            reasons, equal_to([(c.name, c.reason, repr(c.cell)) for c in SMALL_BAD_CELLS]), label="errors"
        )


def test_error_records_keep_the_original_cell(seed_rows):
    cell = seed_rows[0]["feature_vector"][:-40] + "'}"
    with TestPipeline() as p:
        out = (
            p
            | beam.Create([{"file": "x", "feature_vector": cell, "n": 3}])
            | beam.ParDo(DecodeCrops("feature_vector")).with_outputs(ERRORS_TAG, main="crops")
        )
        assert_that(
            out[ERRORS_TAG] | beam.Map(lambda e: (e["reason"], e["row"])),
            equal_to([("bad_zlib", {"file": "x", "feature_vector": cell, "n": 3})]),
        )


def test_encode_crops_matches_torchreid_reference(seed_rows, reference_dir):
    from transforms.crop_codec import decode_crop

    reference = reference_features(reference_dir, "osnet_x0_25_msmt17")
    rows = seed_rows[:20]
    keyed = [({**r, "feature_vector": None}, decode_crop(r["feature_vector"])) for r in rows]
    handler = OsNetModelHandler(BUNDLED_WEIGHTS, batch_size=8)

    def close_to_reference(pairs):
        assert sorted(row["file"] for row, _ in pairs) == sorted(r["file"] for r in rows)
        for row, features in pairs:
            assert features.shape == (512,) and features.dtype == np.float32
            assert cosine(features, reference[row["file"]]) >= 0.99999

    with TestPipeline() as p:
        encoded = p | beam.Create(keyed) | EncodeCrops(handler, "feature_vector")
        assert_that(encoded["features"], close_to_reference, label="features")
        assert_that(encoded[ERRORS_TAG], equal_to([]), label="no errors")


def test_a_batch_the_model_fails_on_becomes_error_rows(seed_rows):
    from transforms.crop_codec import decode_crop

    class Failing(OsNetModelHandler):
        def run_inference(self, batch, model, inference_args=None):
            raise RuntimeError("CUDA out of memory (simulated)")

    rows = seed_rows[:3]
    decoded = [({**r, "feature_vector": None}, decode_crop(r["feature_vector"])) for r in rows]
    with TestPipeline() as p:
        encoded = (
            p
            | beam.Create(decoded)
            | EncodeCrops(Failing(BUNDLED_WEIGHTS, batch_size=4), "feature_vector")
        )
        assert_that(encoded["features"], equal_to([]), label="no features")
        # the error row is the original row: every column, in order, the image cell included
        assert_that(
            encoded[ERRORS_TAG] | beam.Map(lambda e: (e["reason"], list(e["row"].items()), "simulated" in e["detail"])),
            equal_to([("inference_failed", list(r.items()), True) for r in rows]),
            label="errors",
        )


#: What the scripted handler below did, in order: ("start", batch) and ("collect", batch).
#: The DirectRunner runs the job in this process, so the pickled handler appends here.
EVENTS: list[tuple[str, int]] = []


class _Recorded(PendingFeatures):
    """Features computed already, whose collection is recorded."""

    def __init__(self, number: int, features=None, error=None):
        super().__init__(())
        self._futures, self._features, self._error, self.number = None, features, error, number

    def result(self):
        EVENTS.append(("collect", self.number))
        return super().result()


class _Scripted(OsNetModelHandler):
    """Each row's features are its ``n`` column; the batch holding row ``fail_at`` fails when its
    features are collected (not when started: what a network that fails on its threads does)."""

    def __init__(self, *args, fail_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._fail_at = fail_at

    def load_model(self):
        return None

    def run_inference(self, batch, model, inference_args=None):
        number = sum(1 for kind, _ in EVENTS if kind == "start")
        EVENTS.append(("start", number))
        values = np.stack([np.full(512, float(crop[0, 0, 0]), np.float32) for crop in batch])
        if self._fail_at is not None and any(int(crop[0, 0, 0]) == self._fail_at for crop in batch):
            pending = _Recorded(number, error=RuntimeError("network failed on its threads (simulated)"))
        else:
            pending = _Recorded(number, values)
        return [PredictionResult(crop, FeatureSlot(pending, i)) for i, crop in enumerate(batch)]


def _numbered_rows(count: int) -> list[tuple[dict, np.ndarray]]:
    """(row, crop): crop pixel (0, 0, 0) is the row's ``n``, so its features say which row it was."""
    return [({"n": n, "feature_vector": None}, np.full((6, 4, 3), n, np.uint8)) for n in range(count)]


def test_the_model_gets_later_batches_before_earlier_features_are_collected():
    """RunInference only starts a batch; its features are collected BATCHES_AHEAD batches later
    (the model's threads always have the next batch while the pipeline's thread prepares more),
    and every row still gets its own features."""
    EVENTS.clear()
    rows = _numbered_rows(20)
    with TestPipeline() as p:
        encoded = p | beam.Create(rows) | EncodeCrops(_Scripted(BUNDLED_WEIGHTS, batch_size=4), "feature_vector")
        assert_that(
            encoded["features"] | beam.Map(lambda kv: (kv[0]["n"], float(kv[1][0]), float(kv[1][-1]))),
            equal_to([(n, float(n), float(n)) for n in range(20)]),
            label="each row its own features",
        )
        assert_that(encoded[ERRORS_TAG], equal_to([]), label="no errors")
    starts = [number for kind, number in EVENTS if kind == "start"]
    collects = [number for kind, number in EVENTS if kind == "collect"]
    assert sorted(starts) == sorted(collects) == list(range(5))
    for number in collects:  # each collected only once later batches were started (or the bundle ended)
        later = min(number + BATCHES_AHEAD, max(starts))
        assert EVENTS.index(("start", later)) < EVENTS.index(("collect", number))
    assert EVENTS.index(("start", BATCHES_AHEAD)) < EVENTS.index(("collect", 0))


def test_a_batch_that_fails_when_collected_becomes_error_rows_the_others_features():
    EVENTS.clear()
    rows = _numbered_rows(12)
    with TestPipeline() as p:
        encoded = p | beam.Create(rows) | EncodeCrops(
            _Scripted(BUNDLED_WEIGHTS, batch_size=4, fail_at=5), "feature_vector"
        )
        features = encoded["features"] | "Rows" >> beam.Map(lambda kv: kv[0]["n"])
        errors = encoded[ERRORS_TAG] | "Errors" >> beam.Map(
            lambda e: (e["reason"], e["row"]["n"], "simulated" in e["detail"], e["row"]["feature_vector"][:8])
        )
        # the failed batch is exactly one batch of 4 holding row 5; its rows get their cells back
        assert_that(errors | "Count" >> beam.combiners.Count.Globally(), equal_to([4]), label="one batch")
        assert_that(
            errors | "Shape" >> beam.Map(lambda e: (e[0], e[2], e[3])),
            equal_to([("inference_failed", True, "{'width'")] * 4),
            label="errors",
        )
        assert_that(
            (features, errors | "N" >> beam.Map(lambda e: e[1])) | beam.Flatten(),
            equal_to(list(range(12))),
            label="every row once",
        )


def test_restored_cell_has_the_same_pixels_whatever_wrote_it(seed_rows):
    """A cell the producer did not write (another zlib level, spaces) comes back pixel-identical."""
    import zlib

    from transforms.crop_codec import decode_crop
    from transforms.decode import restore_image_cell

    crop = decode_crop(seed_rows[0]["feature_vector"])
    height, width, colors = crop.shape
    other = f"{{ 'image': '{zlib.compress(crop.tobytes(), 9).hex()}', 'width': {width}, 'height': {height}, 'colors': {colors} }}"
    decoded = decode_crop(other)
    restored = restore_image_cell({"a": 1, "img": None, "b": 2}, "img", decoded)
    assert list(restored) == ["a", "img", "b"] and (restored["a"], restored["b"]) == (1, 2)
    assert np.array_equal(decode_crop(restored["img"]), crop)


@pytest.mark.parametrize(
    "kwargs, size",
    [({"device": "cpu"}, 32), ({"device": "cpu", "backend": "torch"}, 8), ({"device": "cuda"}, 512),
     ({"device": "cuda", "precision": "fp16"}, 512), ({"device": "cpu", "batch_size": 50}, 50)],
)
def test_run_inference_batches_are_exactly_the_encoder_batch(kwargs, size):
    """min == max: every RunInference batch is one full backend call (the last of a bundle aside);
    --device cuda plans GPU batches even on a launcher without a GPU (this machine)."""
    handler = OsNetModelHandler(BUNDLED_WEIGHTS, **kwargs)
    assert handler.batch_elements_kwargs() == {"min_batch_size": size, "max_batch_size": size}
