"""Feature vectors <-> the original tool's CSV encoding.

The original tool wrote ``zlib.compress(struct.pack(f"{n}f", *vec)).hex()``: native-order
float32, which is little-endian on every platform it ran on. Packing with an explicit ``<f4``
gives the same bytes there and stays correct on a big-endian host.
"""
from __future__ import annotations

import binascii
import zlib

import numpy as np

FEATURE_DTYPE = np.dtype("<f4")


def encode_features_hex(vec: np.ndarray) -> str:
    """``zlib.compress`` of the little-endian float32 bytes of a 1-D vector, as hex.

    Values are rounded to float32 to nearest, as ``struct.pack('f')`` does (out-of-range values
    become inf here, where struct raised OverflowError).
    """
    values = np.asarray(vec)
    if values.ndim != 1:
        raise ValueError(f"features must be a 1-D vector, got shape {values.shape}")
    return zlib.compress(values.astype(FEATURE_DTYPE).tobytes()).hex()


def decode_features_hex(text: str) -> np.ndarray:
    """The float32 vector written by :func:`encode_features_hex`; ValueError if it is not one."""
    try:
        raw = zlib.decompress(binascii.a2b_hex(text))
    except (binascii.Error, zlib.error, TypeError, ValueError) as error:
        raise ValueError(f"not a hex zlib feature vector: {error}") from None
    if len(raw) % FEATURE_DTYPE.itemsize:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32 values")
    return np.frombuffer(raw, dtype=FEATURE_DTYPE).astype(np.float32, copy=False)
