"""Preprocessing equals the original tool's, computed here independently with Pillow's conversions."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model import preprocess_batch
from model.preprocess import standardize_batch, resize_batch
from testkit.reference import read_crop

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _expected(image: Image.Image, size=(128, 256), mean=MEAN, std=STD) -> np.ndarray:
    """The reference recipe for one PIL image: convert to RGB, resize, /255, normalise, CHW."""
    rgb = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    return ((rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


def _random_crops(seed: int, colors: int, count: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        height, width = rng.integers(20, 300), rng.integers(10, 200)
        shape = (height, width) if colors == 0 else (height, width, colors)
        crops.append(rng.integers(0, 256, size=shape, dtype=np.uint8))
    return crops


def test_real_crops_match_the_reference_recipe(real_crops_dir):
    paths = sorted((real_crops_dir / "pku_reid").glob("0[0-1]*/*.png"))[:12]
    assert paths
    crops = [read_crop(p) for p in paths]
    batch = preprocess_batch(crops)
    assert batch.shape == (len(crops), 3, 256, 128) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for _crop, row, path in zip(crops, batch, paths):
        with Image.open(path) as image:
            np.testing.assert_allclose(row, _expected(image), atol=1e-6, err_msg=str(path))


def test_rgb_of_various_sizes():
    crops = _random_crops(0, 3)
    batch = preprocess_batch(crops)
    for crop, row in zip(crops, batch):
        np.testing.assert_allclose(row, _expected(Image.fromarray(crop, "RGB")), atol=1e-6)


@pytest.mark.parametrize("two_dimensional", [True, False])
def test_grey_is_replicated_like_pillow(two_dimensional):
    crops = _random_crops(1, 0 if two_dimensional else 1)
    batch = preprocess_batch(crops)
    for crop, row in zip(crops, batch):
        grey = Image.fromarray(crop if two_dimensional else crop[:, :, 0], "L")
        np.testing.assert_allclose(row, _expected(grey), atol=1e-6)


def test_alpha_is_dropped_like_pillow():
    crops = _random_crops(2, 4)
    batch = preprocess_batch(crops)
    for crop, row in zip(crops, batch):
        np.testing.assert_allclose(row, _expected(Image.fromarray(crop, "RGBA")), atol=1e-6)


@pytest.mark.parametrize("colors", [3, 4])
def test_bgr_is_flipped_to_rgb(colors):
    crops = _random_crops(3, colors)
    bgr = [np.concatenate([c[:, :, 2::-1], c[:, :, 3:]], axis=2) for c in crops]
    np.testing.assert_array_equal(preprocess_batch(bgr, channel_order="bgr"), preprocess_batch(crops))
    mode = "RGB" if colors == 3 else "RGBA"
    for crop, row in zip(crops, preprocess_batch(bgr, channel_order="bgr")):
        np.testing.assert_allclose(row, _expected(Image.fromarray(crop, mode)), atol=1e-6)


def test_bgr_does_not_affect_grey():
    crops = _random_crops(4, 1)
    np.testing.assert_array_equal(preprocess_batch(crops, channel_order="bgr"), preprocess_batch(crops))


def test_non_contiguous_views_are_fine():
    crop = _random_crops(5, 3, count=1)[0]
    view = crop[::2, ::-1]
    np.testing.assert_allclose(preprocess_batch([view])[0], _expected(Image.fromarray(np.ascontiguousarray(view))), atol=1e-6)


def test_size_mean_and_std_are_honoured():
    crops = _random_crops(6, 3, count=2)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    batch = preprocess_batch(crops, size=(64, 96), mean=mean, std=std)
    assert batch.shape == (2, 3, 96, 64)
    for crop, row in zip(crops, batch):
        np.testing.assert_allclose(row, _expected(Image.fromarray(crop), (64, 96), mean, std), atol=1e-6)


def test_empty_batch():
    batch = preprocess_batch([])
    assert batch.shape == (0, 3, 256, 128) and batch.dtype == np.float32


@pytest.mark.parametrize(
    "crop, message",
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "uint8"),
        (np.zeros((10, 10, 3), dtype=np.uint16), "uint8"),
        (np.zeros((2, 10, 10, 3), dtype=np.uint8), "shape"),
        (np.zeros((10,), dtype=np.uint8), "shape"),
        (np.zeros((10, 10, 2), dtype=np.uint8), "1, 3 or 4 channels"),
        (np.zeros((10, 10, 5), dtype=np.uint8), "1, 3 or 4 channels"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        (None, "numpy array"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
)
def test_invalid_crops(crop, message):
    with pytest.raises(ValueError, match=message):
        preprocess_batch([np.zeros((5, 5, 3), dtype=np.uint8), crop])


def test_invalid_arguments():
    crops = _random_crops(7, 3, count=1)
    with pytest.raises(ValueError, match="channel_order"):
        preprocess_batch(crops, channel_order="rgba")
    with pytest.raises(ValueError, match="3 values"):
        preprocess_batch(crops, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        preprocess_batch(crops, std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="size"):
        preprocess_batch(crops, size=(0, 256))


def test_resize_batch_is_pillows_resize_as_uint8():
    crops = _random_crops(8, 3) + _random_crops(9, 1) + _random_crops(10, 4)
    pixels = resize_batch(crops)
    assert pixels.shape == (len(crops), 256, 128, 3) and pixels.dtype == np.uint8
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    for crop, row in zip(crops, pixels):
        image = Image.fromarray(crop[:, :, 0] if crop.shape[2] == 1 else crop, modes[crop.shape[2]])
        np.testing.assert_array_equal(row, np.asarray(image.convert("RGB").resize((128, 256), Image.BILINEAR)))


def test_standardize_batch_is_the_reference_arithmetic_bit_for_bit():
    """Each value is ((x / 255) - mean) / std in float32, three correctly rounded operations."""
    pixels = np.random.default_rng(11).integers(0, 256, size=(3, 16, 8, 3), dtype=np.uint8)
    batch = standardize_batch(pixels)
    assert batch.shape == (3, 3, 16, 8) and batch.dtype == np.float32 and batch.flags.c_contiguous
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32)
    expected = (x / np.float32(255.0) - MEAN.reshape(1, 3, 1, 1)) / STD.reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(batch, expected)


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8, 4), np.uint8), None],
    ids=["float", "3d", "4-channels", "none"],
)
def test_standardize_batch_rejects_what_is_not_resized_pixels(pixels):
    with pytest.raises(ValueError, match=r"uint8 pixels \(N, H, W, 3\)"):
        standardize_batch(pixels)
