"""Parse, validate and write one image cell in the producer's format.

The producer wrote each crop with ``str(dict)``::

    {'width': W, 'height': H, 'colors': C, 'image': zlib.compress(raw).hex()}

where ``raw`` is the uint8 pixel buffer shaped (H, W, C). Cells come from untrusted tables, so
:func:`decode_crop` is a strict dedicated parser for exactly that grammar (key order free,
optional whitespace and trailing comma, single or double quotes, ``+``/``-`` signs) that never
evaluates anything, checks the cheap things first (type, length, dimensions) and inflates with
a bound, so no cell can make it allocate more than ``W * H * C + 1`` bytes of pixels. Parsing
a real 30 KB cell takes about 7 us (``ast.literal_eval`` takes about 100 us); inflating
dominates the rest.

Every failure is a :class:`CropDecodeError` carrying a stable code from
:mod:`transforms.reasons`.

Text cells are ``str``; ``bytes``/``bytearray`` are accepted as ASCII text (Parquet binary
columns), ``None`` and float NaN are missing values (``empty_cell``), anything else is
``not_a_string``.
"""
from __future__ import annotations

import binascii
import math
import re
import zlib
from typing import Any, NamedTuple

import numpy as np

from transforms.reasons import Reason

DEFAULT_MAX_PIXELS = 2048 * 2048
"""4.2 Mpixel: a whole person at full height in a 4K frame (about 2160 x 1000) fits; the model
resizes every crop to its small input size (``model.preprocess.INPUT_SIZE``), so larger crops
are a producer bug or an attack. At 4 channels the pixel buffer is at most 16 MiB."""

VALID_COLORS = frozenset((1, 3, 4))
KEYS = ("width", "height", "colors", "image")

_MAX_ENTRIES = 16  # bounds the parse loop; a real cell has 4
_MAX_DIM_DIGITS = 12  # longer int literals are absurd dimensions: clamped, never converted
_CLAMP = 10**_MAX_DIM_DIGITS
_INFLATE_CHUNK = 4 << 20  # above this, inflate into one preallocated buffer (see _bounded_inflate)


def zlib_compress_bound(n: int) -> int:
    """zlib's ``compressBound(n)``: the largest ``zlib.compress`` output for n input bytes."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def cell_chars_bound(max_pixels: int) -> int:
    """Longest cell the producer can write for a crop of at most ``max_pixels`` (RGBA, incompressible).

    Use it as ``max_cell_chars`` when raising ``max_pixels``.
    """
    dict_overhead = 128  # keys, quotes, separators and three int literals
    return 2 * zlib_compress_bound(4 * max_pixels) + dict_overhead


DEFAULT_MAX_CELL_CHARS = cell_chars_bound(DEFAULT_MAX_PIXELS)
"""33,564,826 chars (about 32 MiB): every valid cell within DEFAULT_MAX_PIXELS fits, even an
incompressible RGBA one, while a 50 MB cell is refused before it is parsed. Real person crops
are 20 to 40 KB."""


class CropDecodeError(ValueError):
    """A cell that is not a valid crop; ``reason`` is a code from :mod:`transforms.reasons`."""

    def __init__(self, reason: Reason | str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = str(reason)
        self.detail = detail

    def __reduce__(self):  # keep reason/detail through pickling (Beam workers)
        return (type(self), (self.reason, self.detail))


class _Literal(NamedTuple):
    """A scalar literal as a span of the cell: nothing is copied or converted until it is checked."""

    kind: str  # "str" (span inside the quotes), "int" or "other" (float, True, False, None)
    cell: str
    start: int
    end: int

    def text(self) -> str:
        return self.cell[self.start:self.end]

    def shown(self) -> str:
        """The literal as written, cut to 40 chars, for error details."""
        quote = self.cell[self.start - 1] if self.kind == "str" else ""
        return quote + self.cell[self.start:min(self.end, self.start + 40)] + quote


_WS = r"[ \t\f\r\n]*"
_OPEN = re.compile(_WS + r"\{" + _WS)
_CLOSE_EMPTY = re.compile(r"\}" + _WS + r"\Z")
_KEY = re.compile(r"""(?:'([^'\\\r\n]*)'|"([^"\\\r\n]*)")""" + _WS + ":" + _WS)
_SCALAR = re.compile(
    r"(?P<float>[+-]?(?:\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+))|"
    r"(?P<int>[+-]?(?:0|[1-9]\d*))|"
    r"(?P<const>True|False|None)"
)
_SEP = re.compile(_WS + r"([,}])" + _WS)


def _as_text(cell: object) -> str:
    """The cell as ``str``, or the right error for missing values and non-text."""
    if isinstance(cell, str):
        return cell
    if cell is None or (isinstance(cell, (float, np.floating)) and math.isnan(cell)):
        raise CropDecodeError(Reason.EMPTY_CELL, f"missing value ({cell!r})")
    if isinstance(cell, (bytes, bytearray)):
        try:
            return cell.decode("ascii")
        except UnicodeDecodeError:
            raise CropDecodeError(Reason.MALFORMED_LITERAL, "bytes cell is not ASCII") from None
    if type(cell).__name__ in ("NAType", "NaTType"):  # pandas missing markers, without pandas
        raise CropDecodeError(Reason.EMPTY_CELL, f"missing value ({type(cell).__name__})")
    raise CropDecodeError(Reason.NOT_A_STRING, f"cell is {type(cell).__name__}, not str")


def _value_at(text: str, pos: int) -> tuple[_Literal, int]:
    """The scalar literal starting at ``pos`` and the index after it.

    A string runs to the next matching quote (``str.find`` is memchr-fast on a 30 KB image);
    escapes are not interpreted, so a backslash or newline ends up in the value and fails there.
    """
    quote = text[pos:pos + 1]
    if quote == "'" or quote == '"':
        end = text.find(quote, pos + 1)
        if end < 0:
            raise CropDecodeError(Reason.MALFORMED_LITERAL, f"unterminated string at char {pos}")
        return _Literal("str", text, pos + 1, end), end + 1
    match = _SCALAR.match(text, pos)
    if match is None:
        raise CropDecodeError(Reason.MALFORMED_LITERAL, f"not a scalar literal at char {pos}: {text[pos:pos + 40]!r}")
    kind = "int" if match.group("int") is not None else "other"
    return _Literal(kind, text, pos, match.end()), match.end()


def _parse_entries(text: str) -> dict[str, _Literal]:
    """The flat dict literal in ``text`` as {key: scalar}; raises on anything else."""
    opened = _OPEN.match(text)
    if opened is None:
        raise CropDecodeError(Reason.MALFORMED_LITERAL, f"does not start with '{{': {text[:40]!r}")
    pos = opened.end()
    if _CLOSE_EMPTY.match(text, pos):
        return {}
    entries: dict[str, _Literal] = {}
    while True:
        key_match = _KEY.match(text, pos)
        if key_match is None:
            raise CropDecodeError(Reason.MALFORMED_LITERAL, f"no 'key': at char {pos}: {text[pos:pos + 40]!r}")
        key = key_match.group(1) if key_match.group(1) is not None else key_match.group(2)
        if key in entries:
            raise CropDecodeError(Reason.DUPLICATE_KEY, f"key {key!r} appears twice")
        entries[key], pos = _value_at(text, key_match.end())
        sep_match = _SEP.match(text, pos)
        if sep_match is None:
            raise CropDecodeError(Reason.MALFORMED_LITERAL, f"no ',' or '}}' at char {pos}: {text[pos:pos + 40]!r}")
        pos = sep_match.end()
        if sep_match.group(1) == "}":
            if pos != len(text):
                raise CropDecodeError(Reason.MALFORMED_LITERAL, f"junk after '}}' at char {pos}: {text[pos:pos + 40]!r}")
            return entries
        if _CLOSE_EMPTY.match(text, pos):  # a trailing comma before '}'
            return entries
        if len(entries) >= _MAX_ENTRIES:
            raise CropDecodeError(Reason.MALFORMED_LITERAL, f"more than {_MAX_ENTRIES} entries")


def _check_keys(entries: dict[str, _Literal]) -> None:
    unexpected = sorted(set(entries) - set(KEYS))
    if unexpected:
        raise CropDecodeError(Reason.UNEXPECTED_KEY, f"unexpected key(s) {unexpected}")
    missing = [key for key in KEYS if key not in entries]
    if missing:
        raise CropDecodeError(Reason.MISSING_KEY, f"missing key(s) {missing}")


def _int_value(entries: dict[str, _Literal], key: str) -> int:
    """The int literal under ``key``; an absurdly long one is clamped instead of converted."""
    value = entries[key]
    if value.kind != "int":
        raise CropDecodeError(Reason.BAD_DIMENSION_TYPE, f"{key} is {value.shown()}, not an int")
    sign = value.cell[value.start]
    digits = value.end - value.start - (sign in "+-")
    if digits > _MAX_DIM_DIGITS:  # int() of 10**5 digits is slow
        return -_CLAMP if sign == "-" else _CLAMP
    return int(value.text())


def _shape(entries: dict[str, _Literal], max_pixels: int) -> tuple[int, int, int]:
    """(height, width, colors) after type, sign, colors and pixel-count checks."""
    width = _int_value(entries, "width")
    height = _int_value(entries, "height")
    colors = _int_value(entries, "colors")
    for key, size in (("width", width), ("height", height)):
        if size <= 0:
            raise CropDecodeError(Reason.BAD_DIMENSION, f"{key} is {size}, not positive")
    if colors not in VALID_COLORS:
        raise CropDecodeError(Reason.BAD_COLORS, f"colors is {colors}, not 1, 3 or 4")
    if width * height > max_pixels:
        raise CropDecodeError(Reason.TOO_MANY_PIXELS, f"{width} x {height} is over max_pixels={max_pixels}")
    return height, width, colors


def _image_bytes(entries: dict[str, _Literal]) -> bytes:
    value = entries["image"]
    if value.kind != "str":
        raise CropDecodeError(Reason.BAD_IMAGE_TYPE, f"image is {value.shown()}, not a string")
    try:
        return binascii.a2b_hex(value.text())  # strict: no whitespace, even length, ASCII hex only
    except (binascii.Error, ValueError) as error:
        raise CropDecodeError(Reason.BAD_HEX, f"image is not hex ({error}; {value.end - value.start} chars)") from None


def _bounded_inflate(inflater: Any, data: bytes, expected: int) -> bytes | np.ndarray:
    """At most ``expected + 1`` inflated bytes: one byte too many proves the stream is too long.

    One call covers every ordinary crop without a copy. Past ``_INFLATE_CHUNK`` the output goes
    chunk by chunk into one preallocated buffer, so the peak is about expected + 2 chunks
    (a single bounded call would hold its internal blocks and their joined copy: 2 x expected).
    """
    want = min(expected + 1, _INFLATE_CHUNK)
    piece = inflater.decompress(data, want)
    if len(piece) < want or inflater.eof:
        return piece
    out = np.empty(expected + 1, dtype=np.uint8)
    filled = len(piece)
    out[:filled] = np.frombuffer(piece, dtype=np.uint8)
    while filled <= expected and not inflater.eof:
        want = min(expected + 1 - filled, _INFLATE_CHUNK)
        piece = inflater.decompress(inflater.unconsumed_tail, want)
        out[filled:filled + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        filled += len(piece)
        if len(piece) < want:  # input used up (or stream ended) before the bound
            break
    return out[:filled]


def _inflate(data: bytes, expected: int) -> bytes | np.ndarray:
    """The ``expected`` pixel bytes of a complete zlib stream with nothing after it."""
    inflater = zlib.decompressobj()
    try:
        raw = _bounded_inflate(inflater, data, expected)
    except zlib.error as error:
        raise CropDecodeError(Reason.BAD_ZLIB, f"image is not a zlib stream ({error})") from None
    if len(raw) > expected:
        raise CropDecodeError(Reason.SIZE_MISMATCH, f"image inflates to more than width*height*colors={expected} bytes")
    if not inflater.eof:
        raise CropDecodeError(Reason.BAD_ZLIB, f"zlib stream is truncated (inflated {len(raw)} of {expected} bytes)")
    if inflater.unused_data:
        raise CropDecodeError(Reason.TRAILING_DATA, f"{len(inflater.unused_data)} byte(s) after the zlib stream")
    if len(raw) != expected:
        raise CropDecodeError(Reason.SIZE_MISMATCH, f"image inflates to {len(raw)} bytes, expected {expected}")
    return raw


def decode_crop(
    cell: object,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_cell_chars: int = DEFAULT_MAX_CELL_CHARS,
) -> np.ndarray:
    """The crop in ``cell`` as uint8 (H, W, C), often read-only; raises :class:`CropDecodeError` only.

    Checks run cheapest first: type, length (before any parsing), grammar, keys, dimensions and
    pixel count (before any hex decoding), then hex, then a bounded inflate.
    """
    try:
        if isinstance(cell, (str, bytes, bytearray)) and len(cell) > max_cell_chars:
            raise CropDecodeError(Reason.CELL_TOO_LARGE, f"{len(cell)} chars, over max_cell_chars={max_cell_chars}")
        text = _as_text(cell)
        if not text or text.isspace():
            raise CropDecodeError(Reason.EMPTY_CELL, "cell is empty or whitespace")
        entries = _parse_entries(text)
        _check_keys(entries)
        shape = _shape(entries, max_pixels)
        raw = _inflate(_image_bytes(entries), shape[0] * shape[1] * shape[2])
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    except CropDecodeError:
        raise
    except Exception as error:  # a bug or an exotic input must still surface as a row error
        raise CropDecodeError(Reason.MALFORMED_LITERAL, f"unexpected {type(error).__name__}: {error}") from error


def encode_crop(array: np.ndarray) -> str:
    """The producer's cell for a uint8 (H, W, C) or (H, W) array: ``str(dict)`` byte for byte."""
    pixels = np.asarray(array)
    if pixels.dtype != np.uint8:
        raise ValueError(f"crop must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    if pixels.ndim != 3 or pixels.shape[2] not in VALID_COLORS:
        raise ValueError(f"crop must be (H, W) or (H, W, C) with C in {{1, 3, 4}}, got {pixels.shape}")
    height, width, colors = pixels.shape
    image = zlib.compress(np.ascontiguousarray(pixels).tobytes()).hex()
    return f"{{'width': {width}, 'height': {height}, 'colors': {colors}, 'image': '{image}'}}"
