"""Pillow's bilinear resize of a uint8 RGB crop, bit for bit, in compiled loops that release the GIL.

``Image.fromarray(rgb).resize(size, Image.BILINEAR)`` is the original tool's resize, and the
features are only comparable if every pixel is Pillow's. Pillow computes it in two passes of
fixed-point arithmetic (``src/libImaging/Resample.c``): per output column (then row) a window
of source pixels and its weights, made from the bilinear filter in double precision, scaled to
integers of 22 fractional bits and rounded; each pass sums pixel x weight in integers, adds half,
shifts and clips to 0..255; the horizontal pass first, over the source rows the vertical pass
reads. Here the weights are made the same way (the same double operations in the same order:
Python floats are IEEE doubles), and the passes are the same integer sums, so the result is the
same bytes: not a close approximation. Images much taller than wide that shrink vertically are
the one case where ``Image.resize`` goes another way (vertical first, since Pillow 11); they are
left to Pillow (:func:`handles`).

Why: Pillow's resize of a crop and the conversions around it are a large share of the per-row
CPU work around the network on CPU workers, and hold the GIL for part of it. These loops,
compiled by numba, hold no GIL and take a fraction of that time (bench/README.md, "Resize
compiled, bit for bit"); :func:`resize_standardized` also writes
the network's float32 input directly, through a 256-entry table per channel made by
:func:`model.preprocess.standardize_batch` itself (so the values are its values, by construction).

Everything here is checked against Pillow the first time a process uses it (:func:`available`):
on a mismatch (another Pillow's arithmetic, another platform's rounding) it logs why and the
callers use Pillow instead. Without numba the callers use Pillow too.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
from typing import Optional

import numpy as np

_LOG = logging.getLogger(__name__)

#: Pillow's fixed-point precision for 8-bit images: 32 - 8 - 2 fractional bits.
PRECISION_BITS = 22
#: Shapes (height, width) the first-use check compares with Pillow: the real crops' range, up and
#: down in each direction, the network's own size, one side unchanged, and small odd sizes.
CHECK_SHAPES = ((155, 65), (256, 128), (256, 60), (100, 128), (640, 300), (199, 96), (7, 3), (1, 1), (300, 700))

try:  # numba is an install dependency; a platform without its wheels falls back to Pillow
    from numba import njit as _njit
except ImportError:  # pragma: no cover - exercised only where numba cannot be installed
    _njit = None


def _nogil(function):
    """numba's nogil compilation of ``function``, cached on disk where numba finds a writable
    place (next to this file, else the user's cache), else compiled anew in each process."""
    try:
        return _njit(nogil=True, cache=True)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available" (read-only installs)
        return _njit(nogil=True)(function)


njit = _njit  # None without numba


@functools.lru_cache(maxsize=4096)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` for the bilinear filter over
    the whole source (box 0..in_size): per output pixel ``(first source pixel, count)`` and the
    integer weights, int32 (out_size, 2) and (out_size, ksize)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int32)
    weights = np.zeros((out_size, ksize), np.int32)
    one = float(1 << PRECISION_BITS)
    inverse = 1.0 / filterscale
    for out in range(out_size):
        center = 0.0 + (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast
        count = min(int(center + support + 0.5), in_size) - first
        taps = []
        for x in range(count):
            t = abs((x + first - center + 0.5) * inverse)
            taps.append(1.0 - t if t < 1.0 else 0.0)
        total = 0.0
        for tap in taps:  # summed in order, as Pillow does
            total += tap
        for x, tap in enumerate(taps):
            k = tap / total if total != 0.0 else tap
            weights[out, x] = int(-0.5 + k * one) if k < 0 else int(0.5 + k * one)
        bounds[out] = (first, count)
    return bounds, weights


def handles(height: int, width: int, size: tuple[int, int]) -> bool:
    """Whether :func:`resize_rgb` gives ``Image.resize``'s result for a (height, width) image
    resized to ``size`` = (width, height): all but the very tall images that shrink vertically,
    which Pillow resizes vertically first."""
    return not (height > width * 100 and size[1] < height)


if njit is not None:

    @_nogil
    def _clip8(total):
        value = total >> PRECISION_BITS
        return 0 if value < 0 else (255 if value > 255 else value)

    @_nogil
    def _horizontal(source, first_row, bounds, weights, out):
        """``out`` (rows, out_width, 3) uint8: rows ``first_row...`` of ``source`` resampled along x."""
        rows, out_width = out.shape[0], out.shape[1]
        flat_source = source.reshape(source.shape[0], source.shape[1] * 3)
        flat_out = out.reshape(rows, out_width * 3)
        half = 1 << (PRECISION_BITS - 1)
        for y in range(rows):
            line = flat_source[first_row + y]
            target = flat_out[y]
            for xx in range(out_width):
                start, count = bounds[xx, 0] * 3, bounds[xx, 1]
                s0 = s1 = s2 = half
                for x in range(count):
                    k = weights[xx, x]
                    i = start + 3 * x
                    s0 += line[i] * k
                    s1 += line[i + 1] * k
                    s2 += line[i + 2] * k
                target[3 * xx] = _clip8(s0)
                target[3 * xx + 1] = _clip8(s1)
                target[3 * xx + 2] = _clip8(s2)

    @_nogil
    def _vertical_sums(source, first_row, bounds, weights, yy, sums):
        """The integer sums of output row ``yy`` along y (a whole row of pixels at a time)."""
        flat = source.reshape(source.shape[0], source.shape[1] * 3)
        half = 1 << (PRECISION_BITS - 1)
        for j in range(sums.shape[0]):
            sums[j] = half
        start, count = bounds[yy, 0] - first_row, bounds[yy, 1]
        for y in range(count):
            k = weights[yy, y]
            line = flat[start + y]
            for j in range(sums.shape[0]):
                sums[j] += line[j] * k

    @_nogil
    def _vertical(source, first_row, bounds, weights, out):
        """``out`` (out_height, width, 3) uint8: ``source`` (rows from ``first_row``) resampled along y."""
        out_height, width = out.shape[0], out.shape[1]
        flat_out = out.reshape(out_height, width * 3)
        sums = np.empty(width * 3, np.int64)
        for yy in range(out_height):
            _vertical_sums(source, first_row, bounds, weights, yy, sums)
            for j in range(width * 3):
                flat_out[yy, j] = _clip8(sums[j])

    @_nogil
    def _vertical_standardized(source, first_row, bounds, weights, table, out):
        """``out`` (3, out_height, width) float32: the vertical pass, each pixel through ``table``."""
        out_height, width = out.shape[1], out.shape[2]
        sums = np.empty(width * 3, np.int64)
        for yy in range(out_height):
            _vertical_sums(source, first_row, bounds, weights, yy, sums)
            for xx in range(width):
                for c in range(3):
                    out[c, yy, xx] = table[c, _clip8(sums[3 * xx + c])]

    @_nogil
    def _standardized(pixels, table, out):
        """``out`` (3, H, W) float32: uint8 (H, W, 3) ``pixels`` through ``table``."""
        for y in range(pixels.shape[0]):
            for x in range(pixels.shape[1]):
                for c in range(3):
                    out[c, y, x] = table[c, pixels[y, x, c]]


def _horizontal_pass(rgb: np.ndarray, width: int, rows: tuple[int, int]) -> np.ndarray:
    """Rows ``rows`` = [first, last) of ``rgb`` resampled to ``width``, or ``rgb`` itself when its
    width is already that (Pillow skips the pass)."""
    if rgb.shape[1] == width:
        return rgb
    bounds, weights = coefficients(rgb.shape[1], width)
    out = np.empty((rows[1] - rows[0], width, 3), np.uint8)
    _horizontal(rgb, rows[0], bounds, weights, out)
    return out


def _vertical_plan(height: int, out_height: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    bounds, weights = coefficients(height, out_height)
    return bounds, weights, (int(bounds[0, 0]), int(bounds[-1, 0] + bounds[-1, 1]))


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))`` for a uint8 (H, W, 3)
    ``rgb`` that :func:`handles`; ``size`` = (width, height). Needs numba."""
    rgb = np.ascontiguousarray(rgb)  # one memory layout: no compilation for another (compile_for)
    width, height = size
    if rgb.shape[0] == height:
        resized = _horizontal_pass(rgb, width, (0, height))
        return rgb.copy() if resized is rgb else resized  # a copy, as Image.resize gives
    bounds, weights, rows = _vertical_plan(rgb.shape[0], height)
    source = _horizontal_pass(rgb, width, rows)
    first = rows[0] if source is not rgb else 0
    out = np.empty((height, width, 3), np.uint8)
    _vertical(source, first, bounds, weights, out)
    return out


def resize_standardized(rgb: np.ndarray, size: tuple[int, int], table: np.ndarray) -> np.ndarray:
    """float32 (3, height, width): :func:`resize_rgb`'s pixels, channel ``c`` of value ``v`` written
    as ``table[c, v]`` (``table``: float32 (3, 256), :func:`model.preprocess.standardize_table`)."""
    rgb = np.ascontiguousarray(rgb)
    width, height = size
    out = np.empty((3, height, width), np.float32)
    if rgb.shape[0] == height:
        _standardized(_horizontal_pass(rgb, width, (0, height)), table, out)
        return out
    bounds, weights, rows = _vertical_plan(rgb.shape[0], height)
    source = _horizontal_pass(rgb, width, rows)
    _vertical_standardized(source, rows[0] if source is not rgb else 0, bounds, weights, table, out)
    return out


_CHECKED: dict[tuple[int, int], bool] = {}
_CHECK_LOCK = threading.Lock()


def _pillow(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def mismatch(size: tuple[int, int]) -> Optional[str]:
    """None if :func:`resize_rgb` gives Pillow's bytes on :data:`CHECK_SHAPES` (random pixels and
    a smooth ramp each), else what differs."""
    rng = np.random.default_rng(20261203)
    for height, width in CHECK_SHAPES:
        ramp = (np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3) * 7 % 256).astype(np.uint8)
        for rgb in (rng.integers(0, 256, (height, width, 3), dtype=np.uint8), ramp):
            if not handles(height, width, size):
                continue
            expected, got = _pillow(rgb, size), resize_rgb(rgb, size)
            if not np.array_equal(expected, got):
                wrong = int(np.count_nonzero(expected != got))
                return f"{wrong} of {expected.size} values differ from Pillow's for a {height} x {width} image"
    return None


def compile_for(size: tuple[int, int]) -> None:
    """Compiles every specialisation the resizes to ``size`` use, now, on this thread.

    numba compiles a function the first time it meets new argument types (here: whether the crop
    is read-only, as decoded crops are; the table always is). Left to the first crops, that would happen
    on several of the network's worker threads at once, beside the runtime's own threads; numba's
    lazy compilation from many threads has a history of races, and a CI run of the bf16 CLI job
    once hung with a cold cache. So the check below compiles all of them first, under its lock,
    and the worker threads only ever call compiled code (tests/test_pillow_resize.py counts the
    signatures)."""
    width, height = size
    table = np.zeros((3, 256), np.float32)
    table.setflags(write=False)  # as model.preprocess.standardize_table's, the one the callers pass
    for in_height in (height, height + 1):  # the horizontal pass only, or both passes
        for in_width in (width, width + 1):  # the vertical pass on the crop itself, or not
            rgb = np.zeros((in_height, in_width, 3), np.uint8)
            read_only = rgb.copy()
            read_only.setflags(write=False)
            for crop in (rgb, read_only):
                resize_rgb(crop, size)
                resize_standardized(crop, size, table)


def available(size: tuple[int, int]) -> bool:
    """Whether to use these loops in this process: numba is there, they are compiled
    (:func:`compile_for`) and, checked once, they give Pillow's bytes (the reason is logged once
    when they do not). Call it where the model is set up, so that the first crops do not wait."""
    if njit is None:
        return False
    size = (int(size[0]), int(size[1]))
    checked = _CHECKED.get(size)
    if checked is None:
        with _CHECK_LOCK:
            checked = _CHECKED.get(size)
            if checked is None:
                try:
                    compile_for(size)
                    problem = mismatch(size)
                except Exception as error:  # noqa: BLE001  (a compile failure: Pillow still works)
                    problem = f"{type(error).__name__}: {error}"
                if problem:
                    _LOG.warning("compiled resize not used, Pillow resizes instead: %s", problem)
                checked = _CHECKED[size] = problem is None
    return checked
