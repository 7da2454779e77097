"""Stable reason codes for rows that could not be turned into features.

A code is a short snake_case string that goes into the ``reason`` field of an error record.
Codes are part of the output format: downstream tooling filters and counts on them, so a code
is never renamed or reused for another meaning; new codes may be added.

Every code's one-line meaning is in :data:`CELL_REASONS` (the codes
:func:`transforms.crop_codec.decode_crop` raises, roughly in the order the checks run, cheapest
first) and :data:`ROW_REASONS` (the codes the pipeline itself writes); the README's table is
generated from them (``tests/test_readme_facts.py`` checks it), so a meaning is written here only.
"""
from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """A reason code; compares equal to (and formats as) its string value."""

    NOT_A_STRING = "not_a_string"
    CELL_TOO_LARGE = "cell_too_large"
    EMPTY_CELL = "empty_cell"
    MALFORMED_LITERAL = "malformed_literal"
    DUPLICATE_KEY = "duplicate_key"
    UNEXPECTED_KEY = "unexpected_key"
    MISSING_KEY = "missing_key"
    BAD_DIMENSION_TYPE = "bad_dimension_type"
    BAD_DIMENSION = "bad_dimension"
    BAD_COLORS = "bad_colors"
    TOO_MANY_PIXELS = "too_many_pixels"
    BAD_IMAGE_TYPE = "bad_image_type"
    BAD_HEX = "bad_hex"
    BAD_ZLIB = "bad_zlib"
    TRAILING_DATA = "trailing_data"
    SIZE_MISMATCH = "size_mismatch"
    # row-level codes used by the pipeline
    BAD_CSV_RECORD = "bad_csv_record"
    BAD_ENCODING = "bad_encoding"
    INFERENCE_FAILED = "inference_failed"

    def __str__(self) -> str:
        return self.value


CELL_REASONS: dict[str, str] = {
    Reason.NOT_A_STRING.value: "the cell is not text (int, list, dict, ...); bytes are accepted as ASCII",
    Reason.CELL_TOO_LARGE.value: "the cell is longer than the longest valid cell for `--max_pixels`; checked before any parsing",
    Reason.EMPTY_CELL.value: "the cell is empty, whitespace only, None or NaN (a missing value)",
    Reason.MALFORMED_LITERAL.value: "not exactly a flat dict literal of scalars: code, nesting, junk, bad bytes",
    Reason.DUPLICATE_KEY.value: "a key appears twice in the dict literal",
    Reason.UNEXPECTED_KEY.value: "a key other than width, height, colors, image",
    Reason.MISSING_KEY.value: "one of width, height, colors, image is absent",
    Reason.BAD_DIMENSION_TYPE.value: "width, height or colors is not an int literal (str, float, bool, None)",
    Reason.BAD_DIMENSION.value: "width or height is zero or negative",
    Reason.BAD_COLORS.value: "colors is not 1, 3 or 4 (0 and negatives included)",
    Reason.TOO_MANY_PIXELS.value: "width x height is over `--max_pixels` (or a dimension is absurdly long)",
    Reason.BAD_IMAGE_TYPE.value: "the image value is not a string literal",
    Reason.BAD_HEX.value: "the image string has odd length or a non-hex character",
    Reason.BAD_ZLIB.value: "the image bytes are not a complete zlib stream (corrupt or truncated)",
    Reason.TRAILING_DATA.value: "bytes follow the end of the zlib stream",
    Reason.SIZE_MISMATCH.value: "inflated size differs from width x height x colors (shorter or longer)",
}
"""Codes :func:`transforms.crop_codec.decode_crop` can raise, with their one-line meaning."""

ROW_REASONS: dict[str, str] = {
    Reason.BAD_CSV_RECORD.value: (
        "a CSV record could not be parsed (unclosed quote, wrong field count); the error carries `raw_line`"
    ),
    Reason.BAD_ENCODING.value: (
        "a CSV record's bytes are not valid in `--encoding`; the error carries `raw_base64` (the bytes "
        "exactly) and `raw_line` (shown with replacement characters)"
    ),
    Reason.INFERENCE_FAILED.value: "the model raised on the batch this row was in (e.g. out of GPU memory)",
}
"""Codes the pipeline itself writes into error records."""

REASONS: dict[str, str] = {**CELL_REASONS, **ROW_REASONS}
"""Every code with its one-line meaning (the table in the README)."""
