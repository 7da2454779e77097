"""What the model side promises, without torch: the OSNet architectures by name, the length of
their feature vector, and the error raised for weights that cannot be used.

Kept apart from :mod:`model.osnet` and :mod:`model.checkpoint` so the code that only runs an
exported graph (ONNX Runtime in an SDK worker) and the launcher's checks know them without
importing torch.
"""
from __future__ import annotations

__all__ = ["ARCHITECTURE_NAMES", "FEATURE_DIM", "CheckpointError"]

ARCHITECTURE_NAMES = ("osnet_ibn_x1_0", "osnet_x1_0", "osnet_x0_75", "osnet_x0_5", "osnet_x0_25")
"""The OSNet variants this project builds, by torchreid's names (:data:`model.osnet.ARCHITECTURES`
maps each to its builder)."""

FEATURE_DIM = 512
"""Length of the feature vector every OSNet variant produces (the ``fc`` width)."""


class CheckpointError(ValueError):
    """The weights cannot be used: not a checkpoint, unsafe, or not the expected architecture."""
