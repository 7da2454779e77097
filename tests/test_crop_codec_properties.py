"""Property tests: decode_crop raises only CropDecodeError, and accepts only what Python would.

Mutated valid cells are the interesting input: when the decoder does accept one, an independent
reference (``ast.literal_eval`` plus ``zlib.decompress``, safe on these small strings) must read
the same crop from it, so the strict parser never invents a meaning Python would not give.
"""
from __future__ import annotations

import ast
import re
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from transforms.crop_codec import CropDecodeError, decode_crop, encode_crop

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GRAMMAR_ALPHABET = "{}[]()'\":,.+-_ \t\n\\0123456789abcdefxXeETrueFalsNonwidthheightcolorsimage"

crops = st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 3, 4])).flatmap(
    lambda shape: hnp.arrays(np.uint8, shape)
)


def _decode_or_reason(cell: object, **limits) -> np.ndarray | None:
    """The crop, or None after checking that the failure is a CropDecodeError with a code."""
    try:
        return decode_crop(cell, **limits)
    except CropDecodeError as error:
        assert isinstance(error.reason, str) and error.reason
        return None


def _assert_python_reads_the_same(cell: str, crop: np.ndarray) -> None:
    literal = ast.literal_eval(cell)
    height, width, colors = crop.shape
    assert type(literal) is dict and set(literal) == {"width", "height", "colors", "image"}
    assert [type(literal[key]) for key in ("width", "height", "colors")] == [int, int, int]
    assert (literal["width"], literal["height"], literal["colors"]) == (width, height, colors)
    assert zlib.decompress(bytes.fromhex(literal["image"])) == crop.tobytes()


@st.composite
def mutated_cells(draw) -> str:
    """A valid cell with one to three random edits: replace, delete, insert, truncate, renumber."""
    cell = encode_crop(draw(crops))
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(cell)))
        edit = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "renumber"]))
        if edit == "replace" and position < len(cell):
            cell = cell[:position] + draw(st.sampled_from(GRAMMAR_ALPHABET)) + cell[position + 1:]
        elif edit == "delete":
            cell = cell[:position] + cell[position + draw(st.integers(1, 8)):]
        elif edit == "insert":
            cell = cell[:position] + draw(st.text(GRAMMAR_ALPHABET, min_size=1, max_size=8)) + cell[position:]
        elif edit == "truncate":
            cell = cell[:position]
        else:
            key = draw(st.sampled_from(["width", "height", "colors"]))
            number = str(draw(st.integers(-(2**70), 2**70) | st.sampled_from(["0", "-0", "1.0", "True", "'3'"])))
            cell = re.sub(f"('{key}': )[^,}}]*", lambda match, number=number: match.group(1) + number, cell, count=1)
    return cell


@FAST
@given(st.text())
def test_arbitrary_text_raises_only_crop_decode_error(text: str) -> None:
    assert _decode_or_reason(text) is None


@FAST
@given(st.text(GRAMMAR_ALPHABET, max_size=120))
def test_grammar_like_text_raises_only_crop_decode_error(text: str) -> None:
    crop = _decode_or_reason(text)
    if crop is not None:
        _assert_python_reads_the_same(text, crop)


@FAST
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(), st.lists(st.integers()),
                 st.dictionaries(st.text(max_size=5), st.integers()), st.tuples(st.text())))
def test_arbitrary_objects_raise_only_crop_decode_error(cell: object) -> None:
    assert _decode_or_reason(cell) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_cells())
def test_mutated_cells_are_rejected_or_read_as_python_would(cell: str) -> None:
    crop = _decode_or_reason(cell)
    if crop is not None:
        _assert_python_reads_the_same(cell, crop)


@FAST
@given(mutated_cells(), st.integers(1, 64), st.integers(1, 4096))
def test_limits_hold_for_any_accepted_cell(cell: str, max_pixels: int, max_cell_chars: int) -> None:
    crop = _decode_or_reason(cell, max_pixels=max_pixels, max_cell_chars=max_cell_chars)
    if crop is not None:
        assert crop.shape[0] * crop.shape[1] <= max_pixels
        assert len(cell) <= max_cell_chars


@FAST
@given(crops)
def test_encode_decode_round_trip(crop: np.ndarray) -> None:
    cell = encode_crop(crop)
    height, width, colors = crop.shape
    assert cell == str({"width": width, "height": height, "colors": colors, "image": zlib.compress(crop.tobytes()).hex()})
    decoded = decode_crop(cell)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, crop)
