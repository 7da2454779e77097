"""A corpus of hostile image cells with the reason code each must be rejected with.

Reusable: the codec tests, the pipeline tests and the benchmark (which injects these into a
large table) import it. Everything expensive is built once and cached; the whole corpus takes
well under a second to build.

- :func:`bad_cells`: ``BadCell(name, cell, reason)`` rows, rejected under the default limits.
- :func:`raised_limit_cases`: cells checked with raised limits, to show the inflate bound.
- :func:`bomb_cell` / :func:`bomb_stream`: zlib bombs of any declared shape.
- :data:`INJECTION_MARKER`: the file the code-injection cells would create if ever evaluated.
"""
from __future__ import annotations

import functools
import os
import tempfile
import zlib
from typing import NamedTuple

import numpy as np

from transforms.crop_codec import encode_crop

BOMB_INFLATED_SIZE = 1 << 30
"""1 GiB: what the bombs inflate to. Deflate tops out near 1032:1, so its stream is about 1 MB
(2 MB of hex); a 1 KB zlib stream cannot inflate past about 1 MB."""

INJECTION_MARKER = os.path.join(tempfile.gettempdir(), "osnet_bad_cells_injection_marker")
"""Created only if a decoder ever evaluates a code-injection cell."""

LARGE_CELL_CHARS = 50_000_000
"""The "50 MB cell": over DEFAULT_MAX_CELL_CHARS (about 33.6M chars)."""


class BadCell(NamedTuple):
    """One corpus entry: a short unique name, the cell, the expected reason code."""

    name: str
    cell: object
    reason: str


class LimitCase(NamedTuple):
    """A cell decoded with non-default keyword limits."""

    name: str
    cell: object
    limits: dict
    reason: str


def sample_crop(height: int = 6, width: int = 8, colors: int = 3, seed: int = 0) -> np.ndarray:
    """A small deterministic uint8 crop (noise, so it does not compress to nothing)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, colors), dtype=np.uint8)


def crop_cell(width: int, height: int, colors: int, image_hex: str) -> str:
    """A cell in the producer's layout with any image hex (valid or not)."""
    return f"{{'width': {width}, 'height': {height}, 'colors': {colors}, 'image': '{image_hex}'}}"


def _good_hex(height: int = 6, width: int = 8, colors: int = 3) -> str:
    return zlib.compress(sample_crop(height, width, colors).tobytes()).hex()


@functools.lru_cache(maxsize=None)
def bomb_stream(inflated_size: int = BOMB_INFLATED_SIZE) -> bytes:
    """A valid zlib stream of ``inflated_size`` zero bytes, built without materialising them.

    After a full flush, deflate restarts from an empty window, so every further 1 MiB block of
    zeros compresses to the same bytes: repeat them, then append the final block and the adler32
    of n zeros, which is ``(n mod 65521) << 16 | 1``.
    """
    chunk = bytes(1 << 20)
    if inflated_size % len(chunk) or inflated_size <= 0:
        raise ValueError("inflated_size must be a positive multiple of 1 MiB")
    deflater = zlib.compressobj(9)
    first = deflater.compress(chunk) + deflater.flush(zlib.Z_FULL_FLUSH)
    repeated = deflater.compress(chunk) + deflater.flush(zlib.Z_FULL_FLUSH)
    final_block = deflater.flush(zlib.Z_FINISH)[:-4]  # drop the adler32 of only two chunks
    adler = ((inflated_size % 65521) << 16) | 1
    count = inflated_size // len(chunk)
    return first + repeated * (count - 1) + final_block + adler.to_bytes(4, "big")


@functools.lru_cache(maxsize=None)
def bomb_cell(width: int, height: int, colors: int, inflated_size: int = BOMB_INFLATED_SIZE) -> str:
    """A cell declaring ``width x height x colors`` whose image inflates to ``inflated_size``."""
    return crop_cell(width, height, colors, bomb_stream(inflated_size).hex())


@functools.lru_cache(maxsize=None)
def large_cell(chars: int = LARGE_CELL_CHARS) -> str:
    """A cell of exactly ``chars`` characters: a small declared crop with a huge image string."""
    head = crop_cell(64, 64, 3, "")[:-2]  # up to and including the image's opening quote
    digits = chars - len(head) - 2
    tail = "'}" if digits % 2 == 0 else "' }"  # keep the hex even-length
    return head + "0" * (digits - digits % 2) + tail


def _layout_cases() -> list[BadCell]:
    """Missing values, wrong types, size, and anything that is not the flat dict grammar."""
    good = _good_hex()
    return [
        BadCell("empty_string", "", "empty_cell"),
        BadCell("whitespace_only", " \t\r\n ", "empty_cell"),
        BadCell("none", None, "empty_cell"),
        BadCell("float_nan", float("nan"), "empty_cell"),
        BadCell("int_cell", 42, "not_a_string"),
        BadCell("list_cell", [1, 2, 3], "not_a_string"),
        BadCell("dict_object", {"width": 8, "height": 6, "colors": 3, "image": good}, "not_a_string"),
        BadCell("cell_50mb", large_cell(), "cell_too_large"),
        BadCell("plain_text", "hello world", "malformed_literal"),
        BadCell("list_literal", "[1, 2, 3]", "malformed_literal"),
        BadCell("python_code", f"__import__('os').system('touch {INJECTION_MARKER}')", "malformed_literal"),
        BadCell(
            "code_in_value",
            crop_cell(f"__import__('os').system('touch {INJECTION_MARKER}')", 6, 3, good),
            "malformed_literal",
        ),
        BadCell("lambda_value", crop_cell("(lambda: 8)()", 6, 3, good), "malformed_literal"),
        BadCell("set_literal", "{'width', 'height'}", "malformed_literal"),
        BadCell("nested_dict_value", crop_cell("{'a': 1}", 6, 3, good), "malformed_literal"),
        BadCell("deeply_nested_list", crop_cell("[" * 100_000 + "]" * 100_000, 6, 3, good), "malformed_literal"),
        BadCell("deeply_nested_dict", "{'a': " * 50_000 + "1" + "}" * 50_000, "malformed_literal"),
        BadCell("unclosed_dict", crop_cell(8, 6, 3, good)[:-1], "malformed_literal"),
        BadCell("unterminated_string", crop_cell(8, 6, 3, good)[:-2], "malformed_literal"),
        BadCell("junk_after_dict", crop_cell(8, 6, 3, good) + "; x = 1", "malformed_literal"),
        BadCell("bytes_not_ascii", b"{'width': 8\xff}", "malformed_literal"),
        BadCell("int_key", "{1: 8, 'height': 6, 'colors': 3, 'image': ''}", "malformed_literal"),
        BadCell("hex_int_width", crop_cell("0x8", 6, 3, good), "malformed_literal"),
    ]


def _key_and_dimension_cases() -> list[BadCell]:
    """Keys, and the width/height/colors values (all rejected before any hex decoding)."""
    good = _good_hex()
    return [
        BadCell("empty_dict", "{}", "missing_key"),
        BadCell("missing_colors", f"{{'width': 8, 'height': 6, 'image': '{good}'}}", "missing_key"),
        BadCell("extra_key", crop_cell(8, 6, 3, good)[:-1] + ", 'depth': 1}", "unexpected_key"),
        BadCell("misspelled_key", f"{{'widht': 8, 'height': 6, 'colors': 3, 'image': '{good}'}}", "unexpected_key"),
        BadCell("duplicate_key", "{'width': 8, " + crop_cell(8, 6, 3, good)[1:], "duplicate_key"),
        BadCell("width_str", crop_cell("'8'", 6, 3, good), "bad_dimension_type"),
        BadCell("height_float", crop_cell(8, "6.0", 3, good), "bad_dimension_type"),
        BadCell("height_exponent", crop_cell(8, "6e0", 3, good), "bad_dimension_type"),
        BadCell("colors_bool", crop_cell(8, 6, "True", good), "bad_dimension_type"),
        BadCell("width_none", crop_cell("None", 6, 3, good), "bad_dimension_type"),
        BadCell("width_zero", crop_cell(0, 6, 3, good), "bad_dimension"),
        BadCell("height_negative", crop_cell(8, -6, 3, good), "bad_dimension"),
        BadCell("width_absurdly_negative", crop_cell("-" + "9" * 5000, 6, 3, good), "bad_dimension"),
        BadCell("colors_0", crop_cell(8, 6, 0, good), "bad_colors"),
        BadCell("colors_2", crop_cell(8, 6, 2, good), "bad_colors"),
        BadCell("colors_5", crop_cell(8, 6, 5, good), "bad_colors"),
        BadCell("huge_dimensions", crop_cell(1_000_000, 1_000_000, 3, good), "too_many_pixels"),
        BadCell("width_100000_digits", crop_cell("9" * 100_000, 6, 3, good), "too_many_pixels"),
        BadCell("valid_but_over_max_pixels", encode_crop(np.zeros((3000, 3000, 3), np.uint8)), "too_many_pixels"),
        BadCell("bomb_over_max_pixels", bomb_cell(32768, 32768, 1), "too_many_pixels"),
    ]


def _image_cases() -> list[BadCell]:
    """The image string and its zlib stream (declared 8 x 6 x 3 = 144 bytes)."""
    good = _good_hex()
    stream = bytes.fromhex(good)
    short = zlib.compress(sample_crop().tobytes()[:-1]).hex()
    long = zlib.compress(sample_crop().tobytes() + b"\0").hex()
    return [
        BadCell("image_int", crop_cell(8, 6, 3, "")[:-4] + "12345}", "bad_image_type"),
        BadCell("image_none", crop_cell(8, 6, 3, "")[:-4] + "None}", "bad_image_type"),
        BadCell("odd_length_hex", crop_cell(8, 6, 3, good + "0"), "bad_hex"),
        BadCell("non_hex_chars", crop_cell(8, 6, 3, "zz" + good[2:]), "bad_hex"),
        BadCell("hex_with_spaces", crop_cell(8, 6, 3, " ".join(good[i:i + 2] for i in range(0, len(good), 2))), "bad_hex"),
        BadCell("non_ascii_hex", crop_cell(8, 6, 3, "\u0661\u0662" + good[2:]), "bad_hex"),
        BadCell("escaped_hex", crop_cell(8, 6, 3, "\\x37\\x38" + good[2:]), "bad_hex"),
        BadCell("empty_image", crop_cell(8, 6, 3, ""), "bad_zlib"),
        BadCell("truncated_stream", crop_cell(8, 6, 3, good[: len(good) // 4 * 2]), "bad_zlib"),
        BadCell("missing_checksum", crop_cell(8, 6, 3, good[:-8]), "bad_zlib"),
        BadCell("random_bytes", crop_cell(8, 6, 3, sample_crop().tobytes().hex()), "bad_zlib"),
        BadCell("raw_deflate", crop_cell(8, 6, 3, stream[2:-4].hex()), "bad_zlib"),
        BadCell("bad_checksum", crop_cell(8, 6, 3, good[:-2] + ("00" if good[-2:] != "00" else "01")), "bad_zlib"),
        BadCell("trailing_bytes", crop_cell(8, 6, 3, good + "00"), "trailing_data"),
        BadCell("two_streams", crop_cell(8, 6, 3, good + good), "trailing_data"),
        BadCell("inflates_shorter", crop_cell(8, 6, 3, short), "size_mismatch"),
        BadCell("inflates_longer", crop_cell(8, 6, 3, long), "size_mismatch"),
        BadCell("bomb_small_declared", bomb_cell(64, 64, 3), "size_mismatch"),
    ]


@functools.lru_cache(maxsize=None)
def _corpus() -> tuple[BadCell, ...]:
    cases = _layout_cases() + _key_and_dimension_cases() + _image_cases()
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "corpus names must be unique"
    return tuple(cases)


def bad_cells() -> list[BadCell]:
    """Every corpus entry; each must raise CropDecodeError with its reason under default limits."""
    return list(_corpus())


def raised_limit_cases() -> list[LimitCase]:
    """Cells decoded with raised limits: the inflate bound still caps memory at W*H*C + 1."""
    bomb_limits = {"max_pixels": 4096 * 4096}
    return [
        # Declares 48 MiB, inflates to 1 GiB: inflate stops after 48 MiB + 1 byte.
        LimitCase("bomb_4096x4096x3_raised_pixels", bomb_cell(4096, 4096, 3), bomb_limits, "size_mismatch"),
        LimitCase(
            "cell_50mb_raised_chars", large_cell(), {"max_cell_chars": LARGE_CELL_CHARS}, "bad_zlib"
        ),
    ]
