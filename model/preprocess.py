"""The original tool's preprocessing: Pillow bilinear resize, /255, ImageNet mean/std standardisation, NCHW.

Features are only comparable with those of the original tool (and of torchreid's evaluation) if
the pixels fed to the network are the same, so the resize is Pillow's, on the uint8 image, exactly
as there: ``Image.resize((128, 256), Image.BILINEAR)``. Pillow's bilinear filter is antialiased
when shrinking, so OpenCV's or torch's "bilinear" would give visibly different features.
"""
from __future__ import annotations

import functools
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from model import pillow_resize

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_HEIGHT",
    "INPUT_SIZE",
    "INPUT_WIDTH",
    "check_pixels",
    "network_input",
    "prepare_resize",
    "preprocess_batch",
    "resize_batch",
    "standardize_batch",
    "standardize_table",
    "to_rgb",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INPUT_WIDTH, INPUT_HEIGHT = 128, 256
"""The network input's width and height (the original tool's patch_width, patch_height)."""
INPUT_SIZE: tuple[int, int] = (INPUT_WIDTH, INPUT_HEIGHT)
"""(width, height) of the network input, Pillow's order."""

_CHANNEL_ORDERS = ("rgb", "bgr")


def to_rgb(crop: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """One crop as uint8 (H, W, 3) RGB.

    (H, W) and (H, W, 1) are grey and replicated to three channels (what Pillow's ``L -> RGB``
    does); a fourth channel is alpha and dropped (what ``RGBA -> RGB`` does, no compositing);
    ``channel_order="bgr"`` (OpenCV's order) is flipped to RGB.
    """
    if channel_order not in _CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {_CHANNEL_ORDERS}, not {channel_order!r}")
    if not isinstance(crop, np.ndarray):
        raise ValueError(f"a crop must be a numpy array, not {type(crop).__name__}")
    if crop.dtype != np.uint8:
        raise ValueError(f"a crop must be uint8 pixels, not {crop.dtype}")
    if crop.ndim == 2:
        crop = crop[:, :, None]
    if crop.ndim != 3:
        raise ValueError(f"a crop must have shape (H, W) or (H, W, C), not {crop.shape}")
    height, width, colors = crop.shape
    if height == 0 or width == 0:
        raise ValueError(f"a crop must not be empty, got shape {crop.shape}")
    if colors == 1:
        return np.repeat(crop, 3, axis=2)
    if colors not in (3, 4):
        raise ValueError(f"a crop must have 1, 3 or 4 channels, not {colors} (shape {crop.shape})")
    rgb = crop[:, :, :3]
    if channel_order == "bgr":
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def _compiled(rgb: np.ndarray, size: tuple[int, int]) -> bool:
    """Whether :mod:`model.pillow_resize` gives Pillow's result for ``rgb`` here (checked against
    Pillow once per process)."""
    return pillow_resize.handles(rgb.shape[0], rgb.shape[1], size) and pillow_resize.available(size)


def prepare_resize(size: tuple[int, int] = INPUT_SIZE) -> bool:
    """Compiles and checks the compiled resize to ``size`` = (width, height) now, on the calling
    thread (:func:`model.pillow_resize.available`), so that worker threads never compile; whether
    it will be used. Idempotent and cheap after the first call in a process."""
    return pillow_resize.available(_check_size(size))


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's bilinear resize of one uint8 RGB image; ``size`` is (width, height). The same
    bytes as ``Image.resize``, computed by :mod:`model.pillow_resize` where it can."""
    if _compiled(rgb, size):
        return pillow_resize.resize_rgb(rgb, size)
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be a positive (width, height), not {size}")
    return width, height


def _check_standardization(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    if mean_arr.shape != (3,) or std_arr.shape != (3,):
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    if np.any(std_arr <= 0):
        raise ValueError(f"std must be positive, got {list(std)}")
    return mean_arr, std_arr


def check_pixels(pixels: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """``pixels`` if it is what :func:`resize_batch` makes (uint8 (N, H, W, 3), of ``size`` =
    (width, height) when given), else a ValueError that says what it is instead."""
    shape = getattr(pixels, "shape", None)
    if (
        not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 4 or shape[3] != 3
        or (size is not None and shape[1:3] != (size[1], size[0]))
    ):
        expected = "" if size is None else f" with H x W = {size[1]} x {size[0]}"
        raise ValueError(f"expected uint8 pixels (N, H, W, 3){expected}, got "
                         f"{getattr(pixels, 'dtype', type(pixels).__name__)} {shape}")
    return pixels


def resize_batch(
    crops: Sequence[np.ndarray] | Iterable[np.ndarray],
    channel_order: str = "rgb",
    size: tuple[int, int] = INPUT_SIZE,
) -> np.ndarray:
    """Crops -> resized RGB pixels, uint8 (N, H, W, 3): the CPU half of the preprocessing.

    A quarter of the bytes of the float32 input, which is why GPU backends take this and
    standardise on the device (see :func:`standardize_batch` for the arithmetic they must repeat).

    Raises:
        ValueError: a crop that is not uint8, has an unsupported shape or is empty; a bad size.
    """
    width, height = _check_size(size)
    crops = list(crops)
    pixels = np.empty((len(crops), height, width, 3), dtype=np.uint8)
    for index, crop in enumerate(crops):
        pixels[index] = _resize(to_rgb(crop, channel_order), (width, height))
    return pixels


def standardize_batch(
    pixels: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Resized uint8 (N, H, W, 3) pixels -> the network's float32 (N, 3, H, W) input.

    ``(x / 255 - mean) / std`` in float32, in the reference's order of operations, so the
    values are bit-identical to it (three correctly rounded operations per value); computed in
    place per channel plane: no temporaries, no transpose copy. Folding it into one
    multiply-add would be faster, but it rounds differently, and a random-weight x1.0 network
    amplifies that (bench/README.md, "Findings").
    """
    mean_arr, std_arr = _check_standardization(mean, std)
    count, height, width, _ = check_pixels(pixels).shape
    batch = np.empty((count, 3, height, width), dtype=np.float32)
    for channel in range(3):
        plane = batch[:, channel]
        np.divide(pixels[:, :, :, channel], np.float32(255.0), out=plane, dtype=np.float32)
        plane -= mean_arr[channel]
        plane /= std_arr[channel]
    return batch


@functools.lru_cache(maxsize=16)
def standardize_table(mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """float32 (3, 256): :func:`standardize_batch` of every pixel value 0..255 in every channel.
    Standardising is per value and per channel, so looking a pixel up here gives its values
    exactly (read-only: shared by threads)."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :, None], (1, 1, 256, 3))
    table = np.ascontiguousarray(standardize_batch(np.ascontiguousarray(values), mean, std)[0, :, 0, :])
    table.setflags(write=False)
    return table


def network_input(
    crop: np.ndarray,
    channel_order: str = "rgb",
    size: tuple[int, int] = INPUT_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """One crop -> the network's float32 (1, 3, H, W) input: :func:`preprocess_batch` of ``[crop]``,
    bit for bit, in one compiled pass where :mod:`model.pillow_resize` can (no GIL held)."""
    width, height = _check_size(size)
    rgb = to_rgb(crop, channel_order)
    if _compiled(rgb, (width, height)):
        table = standardize_table(tuple(mean), tuple(std))  # checked by standardize_batch when made
        return pillow_resize.resize_standardized(rgb, (width, height), table)[None]
    return standardize_batch(resize_batch([rgb], size=(width, height)), mean, std)


def preprocess_batch(
    crops: Sequence[np.ndarray] | Iterable[np.ndarray],
    channel_order: str = "rgb",
    size: tuple[int, int] = INPUT_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Crops -> the network's input, float32 (N, 3, H, W): :func:`resize_batch` then :func:`standardize_batch`.

    Args:
        crops: uint8 arrays (H, W, C) with C in {1, 3, 4}, or (H, W); sizes may differ.
        channel_order: "rgb" or "bgr" for 3- and 4-channel crops.
        size: (width, height) to resize to, Pillow's order; the original tool's is (128, 256).
        mean, std: per-channel standardisation of the [0, 1] pixel values (RGB order).
    Raises:
        ValueError: a crop that is not uint8, has an unsupported shape or is empty; bad arguments.
    """
    _check_size(size)
    _check_standardization(mean, std)  # before the work, not after it
    return standardize_batch(resize_batch(crops, channel_order, size), mean, std)
