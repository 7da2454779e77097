"""decode_crop / encode_crop: the bad-cell corpus, real crops, format variants, limits."""
from __future__ import annotations

import ast
import csv
import os
import pickle
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from testkit.bad_cells import INJECTION_MARKER, BadCell, bad_cells, bomb_stream, crop_cell, raised_limit_cases, sample_crop
from transforms import reasons
from transforms.crop_codec import (
    DEFAULT_MAX_CELL_CHARS,
    DEFAULT_MAX_PIXELS,
    CropDecodeError,
    cell_chars_bound,
    decode_crop,
    encode_crop,
    zlib_compress_bound,
)

CORPUS = bad_cells()
IMAGE_COLUMN = "feature_vector"  # the seed table keeps the crop cell under this name


def _reason_of(cell: object, **limits) -> str:
    with pytest.raises(CropDecodeError) as caught:
        decode_crop(cell, **limits)
    assert type(caught.value) is CropDecodeError
    return caught.value.reason


@pytest.fixture(scope="module")
def seed_cells(seed_table: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with open(seed_table, newline="") as handle:
        return list(csv.DictReader(handle))


# --- the corpus -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_bad_cell_gets_its_reason(case: BadCell) -> None:
    assert _reason_of(case.cell) == case.reason


@pytest.mark.parametrize("case", raised_limit_cases(), ids=lambda case: case.name)
def test_raised_limit_case_gets_its_reason(case) -> None:
    assert _reason_of(case.cell, **case.limits) == case.reason


def test_corpus_covers_every_cell_reason() -> None:
    kinds = {case.reason for case in CORPUS}
    assert kinds == set(reasons.CELL_REASONS)
    assert len(kinds) >= 15


def test_code_injection_is_never_evaluated() -> None:
    if os.path.exists(INJECTION_MARKER):
        os.remove(INJECTION_MARKER)
    for case in CORPUS:
        if "__import__" in str(case.cell):
            _reason_of(case.cell)
    assert not os.path.exists(INJECTION_MARKER)


def test_bomb_stream_is_a_valid_zlib_stream_of_zeros() -> None:
    assert zlib.decompress(bomb_stream(8 << 20)) == bytes(8 << 20)
    assert len(bomb_stream()) < 2 * 1024 * 1024  # 1 GiB of zeros in about 1 MB


# --- good cells -----------------------------------------------------------------------------


def test_real_crops_decode_and_reencode_exactly(seed_cells) -> None:
    assert len(seed_cells) > 100
    for row in seed_cells:
        cell = row[IMAGE_COLUMN]
        crop = decode_crop(cell)
        literal = ast.literal_eval(cell)
        assert crop.dtype == np.uint8
        assert crop.shape == (literal["height"], literal["width"], literal["colors"])
        assert crop.tobytes() == zlib.decompress(bytes.fromhex(literal["image"]))
        assert encode_crop(crop) == cell


def test_real_crops_match_their_image_files(seed_cells, real_crops_dir: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    for row in seed_cells[:24]:
        with image_module.open(real_crops_dir / row["file"]) as image:
            expected = np.asarray(image.convert("RGB"))
        np.testing.assert_array_equal(decode_crop(row[IMAGE_COLUMN]), expected)


@pytest.mark.parametrize("shape", [(6, 8, 3), (5, 7, 1), (4, 9, 4), (1, 1, 3), (128, 48, 3)])
def test_synthetic_round_trip_matches_producer_format(shape) -> None:
    crop = sample_crop(*shape)
    cell = encode_crop(crop)
    height, width, colors = shape
    assert cell == str({"width": width, "height": height, "colors": colors, "image": zlib.compress(crop.tobytes()).hex()})
    np.testing.assert_array_equal(decode_crop(cell), crop)


def test_grey_2d_array_is_written_with_one_color() -> None:
    grey = sample_crop(5, 7, 1)[:, :, 0]
    cell = encode_crop(grey)
    assert ast.literal_eval(cell)["colors"] == 1
    np.testing.assert_array_equal(decode_crop(cell)[:, :, 0], grey)


def test_non_contiguous_array_encodes_its_pixels() -> None:
    crop = sample_crop(6, 8, 3)
    view = crop[:, ::-1]
    np.testing.assert_array_equal(decode_crop(encode_crop(view)), view)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros(4, np.uint8)])
def test_encode_rejects_what_the_producer_cannot_write(bad) -> None:
    with pytest.raises(ValueError):
        encode_crop(bad)


def _variants(crop: np.ndarray) -> dict[str, object]:
    image = zlib.compress(crop.tobytes()).hex()
    return {
        "double_quotes": f'{{"width": 8, "height": 6, "colors": 3, "image": "{image}"}}',
        "key_order": f"{{'image': '{image}', 'colors': 3, 'height': 6, 'width': 8}}",
        "no_spaces": f"{{'width':8,'height':6,'colors':3,'image':'{image}'}}",
        "whitespace": f"  \n{{ 'width' :\t8 ,\n 'height': 6, 'colors': 3, 'image': '{image}' }}\n ",
        "trailing_comma": f"{{'width': 8, 'height': 6, 'colors': 3, 'image': '{image}',}}",
        "plus_sign": f"{{'width': +8, 'height': 6, 'colors': 3, 'image': '{image}'}}",
        "upper_hex": crop_cell(8, 6, 3, image.upper()),
        "bytes": crop_cell(8, 6, 3, image).encode("ascii"),
        "bytearray": bytearray(crop_cell(8, 6, 3, image).encode("ascii")),
        "numpy_str": np.str_(crop_cell(8, 6, 3, image)),
    }


@pytest.mark.parametrize("name", list(_variants(sample_crop())))
def test_accepted_format_variants(name: str) -> None:
    crop = sample_crop()
    np.testing.assert_array_equal(decode_crop(_variants(crop)[name]), crop)


# --- inputs that are not text ---------------------------------------------------------------


@pytest.mark.parametrize(
    "cell, reason",
    [
        (np.nan, "empty_cell"),
        (np.float32("nan"), "empty_cell"),
        (1.5, "not_a_string"),
        (True, "not_a_string"),
        (object(), "not_a_string"),
        (np.zeros(3), "not_a_string"),
        (memoryview(b"{}"), "not_a_string"),
    ],
    ids=["np_nan", "np_float32_nan", "float", "bool", "object", "ndarray", "memoryview"],
)
def test_non_text_inputs(cell, reason) -> None:
    assert _reason_of(cell) == reason


def test_pandas_missing_markers_are_empty_cells() -> None:
    pandas = pytest.importorskip("pandas")
    assert _reason_of(pandas.NA) == "empty_cell"
    assert _reason_of(pandas.NaT) == "empty_cell"


# --- limits and the error type --------------------------------------------------------------


def test_cell_size_is_checked_before_parsing() -> None:
    junk = "x" * 101
    assert _reason_of(junk, max_cell_chars=100) == "cell_too_large"
    assert _reason_of(junk.encode(), max_cell_chars=100) == "cell_too_large"
    assert _reason_of(junk) == "malformed_literal"


def test_max_pixels_is_inclusive() -> None:
    cell = encode_crop(sample_crop(6, 8, 3))
    assert decode_crop(cell, max_pixels=48).shape == (6, 8, 3)
    assert _reason_of(cell, max_pixels=47) == "too_many_pixels"


def test_default_limits_are_consistent() -> None:
    assert DEFAULT_MAX_PIXELS == 2048 * 2048
    assert DEFAULT_MAX_CELL_CHARS == cell_chars_bound(DEFAULT_MAX_PIXELS)
    assert 33_000_000 < DEFAULT_MAX_CELL_CHARS < 50_000_000
    incompressible = os.urandom(1 << 16)
    assert len(zlib.compress(incompressible)) <= zlib_compress_bound(len(incompressible))
    worst = encode_crop(np.frombuffer(os.urandom(64 * 64 * 4), np.uint8).reshape(64, 64, 4))
    assert len(worst) <= cell_chars_bound(64 * 64)


def test_error_carries_reason_and_detail_through_pickle() -> None:
    with pytest.raises(CropDecodeError) as caught:
        decode_crop("{}")
    error = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(error, ValueError)
    assert (error.reason, error.detail) == (caught.value.reason, caught.value.detail)
    assert error.reason == "missing_key" and "colors" in error.detail
    assert isinstance(error.reason, str) and type(error.reason) is str


def test_every_reason_has_a_meaning() -> None:
    assert set(reasons.REASONS) == {r.value for r in reasons.Reason}
    for code, meaning in reasons.REASONS.items():
        assert meaning.strip() and "\n" not in meaning and "|" not in meaning  # one table cell
        assert reasons.Reason(code) == code and str(reasons.Reason(code)) == code
    assert len(reasons.CELL_REASONS) >= 15
    assert set(reasons.ROW_REASONS) == {"bad_csv_record", "bad_encoding", "inference_failed"}
