"""model.pillow_resize against Pillow itself: the same bytes for every shape, channel count and
order, or Pillow is used; the network input it writes equals resize + standardise bit for bit."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from model import pillow_resize
from model.preprocess import INPUT_SIZE, network_input, resize_batch, standardize_batch, standardize_table


def pillow_rgb(crop: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """The reference's RGB image of a crop, written out independently of model.preprocess."""
    if crop.ndim == 2:
        crop = crop[:, :, None]
    if crop.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(crop, 3, axis=2))
    rgb = crop[:, :, :3]
    return np.ascontiguousarray(rgb[:, :, ::-1] if channel_order == "bgr" else rgb)


def pillow_resized(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_the_compiled_resize_is_what_runs_here():
    """numba is an install dependency: the check against Pillow passed, so the pipeline uses it
    (a silent fall-back to Pillow would hide a lost speed-up)."""
    assert pillow_resize.njit is not None
    assert pillow_resize.mismatch(INPUT_SIZE) is None
    assert pillow_resize.available(INPUT_SIZE)


crops = st.tuples(
    st.integers(1, 700),  # height
    st.integers(1, 400),  # width
    st.sampled_from([1, 3, 4]),
    st.sampled_from(["rgb", "bgr"]),
    st.integers(0, 2**32 - 1),
    st.booleans(),  # random pixels or a ramp (long runs of similar values)
)


def make_crop(height: int, width: int, colors: int, seed: int, ramp: bool) -> np.ndarray:
    if ramp:
        values = np.arange(height * width * colors, dtype=np.int64) * (1 + seed % 13)
        return (values % 256).astype(np.uint8).reshape(height, width, colors)
    return np.random.default_rng(seed).integers(0, 256, (height, width, colors), dtype=np.uint8)


@settings(max_examples=150, deadline=None)
@given(crops, st.sampled_from([INPUT_SIZE, (64, 128), (37, 5), (400, 30)]))
def test_network_input_is_pillow_then_standardize_bit_for_bit(spec, size):
    height, width, colors, order, seed, ramp = spec
    crop = make_crop(height, width, colors, seed, ramp)
    expected = standardize_batch(pillow_resized(pillow_rgb(crop, order), size)[None])
    assert same_bits(network_input(crop, order, size), expected)


@settings(max_examples=150, deadline=None)
@given(crops)
def test_resize_batch_is_pillow_bit_for_bit(spec):
    height, width, colors, order, seed, ramp = spec
    crop = make_crop(height, width, colors, seed, ramp)
    assert same_bits(resize_batch([crop], order)[0], pillow_resized(pillow_rgb(crop, order), INPUT_SIZE))


@pytest.mark.parametrize("shape", [(257, 2), (400, 3), (1000, 4), (90000, 1)])
def test_very_tall_crops_are_left_to_pillow(shape):
    """Pillow resizes an image over 100x taller than wide vertically first when it shrinks it;
    those go to Pillow itself, and come out as Pillow's."""
    assert not pillow_resize.handles(shape[0], shape[1], INPUT_SIZE)
    crop = make_crop(*shape, 3, seed=5, ramp=False)
    expected = pillow_resized(crop, INPUT_SIZE)
    assert same_bits(resize_batch([crop])[0], expected)
    assert same_bits(network_input(crop), standardize_batch(expected[None]))


def test_the_table_is_standardize_batch_of_every_value():
    table = standardize_table()
    pixels = np.zeros((1, 4, 256, 3), np.uint8)
    pixels[:, :, :, :] = np.arange(256, dtype=np.uint8)[None, None, :, None]
    expected = standardize_batch(pixels)
    for channel in range(3):
        assert same_bits(table[channel], expected[0, channel, 2])
    assert not table.flags.writeable


def test_a_mismatch_with_pillow_switches_the_compiled_resize_off(monkeypatch, caplog):
    """Another Pillow's arithmetic (or platform's rounding) must not change a value: the check
    finds the difference, says so once, and the values are Pillow's."""
    real = pillow_resize.resize_rgb

    def off_by_one(rgb, size):
        out = real(rgb, size).copy()
        out[0, 0, 0] ^= 1
        return out

    monkeypatch.setattr(pillow_resize, "resize_rgb", off_by_one)
    monkeypatch.setattr(pillow_resize, "_CHECKED", {})
    with caplog.at_level(logging.WARNING, logger="model.pillow_resize"):
        assert not pillow_resize.available(INPUT_SIZE)
        assert not pillow_resize.available(INPUT_SIZE)
    warnings = [r.getMessage() for r in caplog.records if "Pillow resizes instead" in r.getMessage()]
    assert len(warnings) == 1 and "differ from Pillow's" in warnings[0]
    crop = make_crop(155, 65, 3, seed=1, ramp=False)
    assert same_bits(resize_batch([crop])[0], pillow_resized(crop, INPUT_SIZE))


def test_real_crops_are_pillow_bit_for_bit(seed_table):
    from testkit.reference import read_seed_rows
    from transforms.crop_codec import decode_crop

    for row in read_seed_rows(seed_table):
        crop = decode_crop(row["feature_vector"])
        expected = pillow_resized(pillow_rgb(crop), INPUT_SIZE)
        assert same_bits(resize_batch([crop])[0], expected)
        assert same_bits(network_input(crop), standardize_batch(expected[None]))


def test_compiles_without_a_disk_cache_where_numba_finds_none(monkeypatch):
    """A read-only install: numba refuses ``cache=True`` at decoration; the loops are compiled
    per process instead of failing the import."""
    calls = []

    def fake_njit(**options):
        calls.append(options)
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return lambda function: function

    monkeypatch.setattr(pillow_resize, "_njit", fake_njit)
    assert pillow_resize._nogil(len)("abc") == 3
    assert calls == [{"nogil": True, "cache": True}, {"nogil": True}]


_WORKER_THREADS_NEVER_COMPILE = r"""
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from model import pillow_resize
from model.preprocess import INPUT_SIZE, network_input, prepare_resize
from transforms.crop_codec import decode_crop, encode_crop

DISPATCHERS = ("_clip8", "_horizontal", "_vertical_sums", "_vertical", "_vertical_standardized", "_standardized")


def signatures():
    return {name: len(getattr(pillow_resize, name).signatures) for name in DISPATCHERS}


assert prepare_resize(INPUT_SIZE)
before = signatures()
rng = np.random.default_rng(7)
crops = []
for height, width, colors in ((155, 65, 3), (256, 128, 3), (256, 60, 4), (100, 128, 1), (640, 300, 3), (7, 3, 3)):
    crop = rng.integers(0, 256, (height, width, colors), dtype=np.uint8)
    crops += [crop, decode_crop(encode_crop(crop))]  # writable, and read-only as decoded cells are
work = [(crop, order) for crop in crops for order in ("rgb", "bgr")]
with ThreadPoolExecutor(4) as pool:
    list(pool.map(lambda job: network_input(job[0], job[1]), work * 3))
assert not decode_crop(encode_crop(crops[0])).flags.writeable
after = signatures()
print(before, after)
sys.exit(0 if after == before else 1)
"""


def test_worker_threads_never_compile_after_prepare_resize():
    """In a fresh process: once :func:`model.preprocess.prepare_resize` ran (FeatureEngine calls it
    where the model is set up), crops of every kind (read-only as decoded, writable, grey, RGBA,
    BGR, both passes or one) resized on many threads at once add no numba specialisation, so no
    worker thread compiles (lazy compilation from several threads at once is what a CI hang
    pointed at)."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    completed = subprocess.run([sys.executable, "-c", _WORKER_THREADS_NEVER_COMPILE], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_engine_prepares_the_compiled_resize_where_it_is_built(monkeypatch):
    from model.engine import FeatureEngine
    from model.policy import plan_runtime

    class Runtime:
        def __call__(self, batch):
            return np.zeros((len(batch), 512), np.float32)

    monkeypatch.setattr(pillow_resize, "_CHECKED", {})
    FeatureEngine(None, plan_runtime("onnxruntime", "cpu"), runtime=Runtime(), input_size=(64, 160))
    assert pillow_resize._CHECKED == {(64, 160): True}
