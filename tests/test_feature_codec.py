"""Feature codec: round trips, and byte equality with the original tool's struct.pack encoding."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from transforms.feature_codec import decode_features_hex, encode_features_hex

FAST = settings(max_examples=150, deadline=None)


def original_encoding(vec) -> str:
    """What the original tool wrote: native float32 via struct, zlib, hex."""
    return zlib.compress(struct.pack(f"{len(vec)}f", *vec)).hex()


def test_host_is_little_endian_as_the_original_assumed() -> None:
    assert struct.pack("f", 1.0) == np.array([1.0], "<f4").tobytes()


def test_512_feature_vector_round_trips_and_matches_struct_pack() -> None:
    vec = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    text = encode_features_hex(vec)
    assert text == original_encoding(vec)
    decoded = decode_features_hex(text)
    assert decoded.dtype == np.float32 and decoded.shape == (512,)
    np.testing.assert_array_equal(decoded, vec)


@FAST
@given(hnp.arrays(np.float32, st.integers(0, 64), elements=st.floats(width=32)))
def test_float32_round_trip_is_bit_exact(vec: np.ndarray) -> None:
    decoded = decode_features_hex(encode_features_hex(vec))
    assert decoded.tobytes() == vec.astype("<f4").tobytes()


@FAST
@given(st.lists(st.floats(-1e38, 1e38, allow_nan=False), max_size=64))
def test_python_floats_encode_like_struct_pack(values: list[float]) -> None:
    assert encode_features_hex(np.array(values, dtype=np.float64)) == original_encoding(values)
    assert encode_features_hex(values) == original_encoding(values)


def test_infinities_and_signed_zero_survive() -> None:
    vec = np.array([np.inf, -np.inf, -0.0, 0.0, np.finfo(np.float32).tiny / 2], np.float32)
    assert encode_features_hex(vec) == original_encoding(vec)
    assert decode_features_hex(encode_features_hex(vec)).tobytes() == vec.tobytes()


@pytest.mark.parametrize(
    "text",
    ["zz", "abc", zlib.compress(b"\0" * 5).hex(), "789c", b"not str", None, zlib.compress(b"x").hex()[:-2]],
    ids=["non_hex", "odd_length", "not_whole_floats", "truncated", "bytes", "none", "bad_checksum"],
)
def test_decode_rejects_what_is_not_a_feature_vector(text) -> None:
    with pytest.raises(ValueError):
        decode_features_hex(text)


def test_encode_rejects_non_vectors() -> None:
    with pytest.raises(ValueError):
        encode_features_hex(np.zeros((2, 512), np.float32))
