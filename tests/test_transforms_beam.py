"""The Beam steps on their own, with TestPipeline and assert_that."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from testkit.bad_cells import bad_cells
from tests.pipeline_helpers import cosine, read_seed_rows, reference_features
from transforms.decode import DecodeCrops
from transforms.errors import ERRORS_TAG
from transforms.inference import EncodeCrops, OsNetModelHandler
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
