"""What every runtime is: float32 (N, 3, H, W) in, float32 (N, 512) out."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["FeatureBackend", "check_batch"]


@runtime_checkable
class FeatureBackend(Protocol):
    """Runs the network: float32 (N, 3, H, W) ndarray -> float32 (N, 512) ndarray."""

    name: str
    """"torch", "onnxruntime" or "openvino"."""
    device: str
    """"cpu" or "cuda[:N]"."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def check_batch(batch: np.ndarray) -> np.ndarray:
    """``batch`` as a contiguous float32 (N, 3, H, W) array, or a ValueError saying what it is."""
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1] != 3:
        shape = getattr(batch, "shape", None)
        raise ValueError(f"expected a float32 (N, 3, H, W) array, got {type(batch).__name__} of shape {shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)
