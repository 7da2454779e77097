"""Decompression bombs cost at most W*H*C + 1 bytes, and max_pixels stops huge valid crops.

Two measurements: tracemalloc in this process (Python and numpy allocations, exact), and the
peak RSS of a fresh subprocess (everything, including zlib's own buffers). No time bounds:
they would only make CI flaky; the corpus test already shows these reject in milliseconds.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from testkit.bad_cells import BOMB_INFLATED_SIZE, bomb_cell, large_cell
from transforms.crop_codec import CropDecodeError, decode_crop, encode_crop

MIB = 1 << 20
LIMIT = 100 * MIB
REPO_ROOT = Path(__file__).resolve().parents[1]


def _peak_bytes_while(action) -> int:
    """Peak traced allocation above the starting level while ``action`` runs."""
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start


def _rejects(cell: str, reason: str, **limits):
    def action() -> None:
        with pytest.raises(CropDecodeError) as caught:
            decode_crop(cell, **limits)
        assert caught.value.reason == reason

    return action


@pytest.mark.parametrize(
    "shape, limits, reason, bound",
    [
        ((64, 64, 3), {}, "size_mismatch", 8 * MIB),  # a copy of the 2 MB hex, its 1 MB bytes
        ((32768, 32768, 1), {}, "too_many_pixels", 1 * MIB),  # rejected before any hex decoding
        ((4096, 4096, 3), {"max_pixels": 4096 * 4096}, "size_mismatch", LIMIT),  # 48 MiB + 1 inflated
    ],
    ids=["small_declared", "huge_declared", "raised_max_pixels"],
)
def test_gigabyte_bomb_is_rejected_within_its_bound(shape, limits, reason, bound) -> None:
    width, height, colors = shape
    cell = bomb_cell(width, height, colors)
    peak = _peak_bytes_while(_rejects(cell, reason, **limits))
    assert peak < bound, f"peak {peak / MIB:.1f} MiB while rejecting a {BOMB_INFLATED_SIZE >> 30} GiB bomb"
    assert peak < LIMIT


def test_50mb_cell_is_rejected_without_copying_it() -> None:
    cell = large_cell()
    assert _peak_bytes_while(_rejects(cell, "cell_too_large")) < 1 * MIB


def test_max_pixels_stops_a_huge_valid_crop_before_inflating() -> None:
    crop = np.zeros((3000, 3000, 3), np.uint8)
    cell = encode_crop(crop)
    assert _peak_bytes_while(_rejects(cell, "too_many_pixels")) < 1 * MIB
    assert decode_crop(cell, max_pixels=3000 * 3000).shape == crop.shape  # it was valid all along


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource
    from testkit.bad_cells import bomb_cell, large_cell
    from transforms.crop_codec import CropDecodeError, decode_crop

    cases = [
        (bomb_cell(64, 64, 3), {}),
        (bomb_cell(32768, 32768, 1), {}),
        (bomb_cell(4096, 4096, 3), {"max_pixels": 4096 * 4096}),
        (large_cell(), {}),
    ]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reasons = []
    for _ in range(3):
        for cell, limits in cases:
            try:
                decode_crop(cell, **limits)
                reasons.append("decoded")
            except CropDecodeError as error:
                reasons.append(error.reason)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kib": after - before, "reasons": reasons[:4]}))
    """
)


def test_peak_rss_grows_less_than_100_mb_on_gigabyte_bombs() -> None:
    pytest.importorskip("resource")
    result = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["reasons"] == ["size_mismatch", "too_many_pixels", "size_mismatch", "cell_too_large"]
    assert report["growth_kib"] * 1024 < LIMIT, report
