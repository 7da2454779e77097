"""``OsNetEncoder``: crops in, 512-d OSNet features out, compatible with the original tool.

The original tool's constructor took ``input_width, input_height, weight_filepath, batch_size,
num_classes, patch_height, patch_width, norm_mean, norm_std, GPU``; every one of those keywords is
still accepted, so existing callers keep working, and ``get_features`` keeps its contract (one
feature per crop, in order). What changed underneath: weights are read safely and strictly (see
:mod:`model.checkpoint`), the architecture is inferred from them, batches are really batched, and
on CPU the network runs on ONNX Runtime by default. The work is :class:`model.engine.FeatureEngine`'s;
this facade adds the original options (the ``GPU`` flag, L2 normalisation, torch tensors, None
crops) and, on a GPU, resizes the next chunk while the network runs the current one.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from model.checkpoint import CheckpointSource, load_osnet
from model.engine import FeatureEngine
from model.osnet import FEATURE_DIM, OSNet
from model.policy import plan_here
from model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from model.runtimes import FeatureBackend

__all__ = ["OsNetEncoder", "l2_normalize"]

log = logging.getLogger(__name__)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Every row of float32 (N, D) ``features`` scaled to unit length, in place (zero rows stay zero)."""
    features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), np.float32(1e-12))
    return features


def _device_for(GPU: Optional[bool]) -> str:
    """The original ``GPU`` flag as a device: None means "use one if there is one"."""
    if GPU is None:
        return "auto"
    if GPU:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "GPU=True but CUDA is not available to torch on this machine; "
                "pass GPU=False (CPU) or GPU=None (CUDA when available)"
            )
        return "cuda"
    return "cpu"


class OsNetEncoder:
    """Batched OSNet feature extractor.

    Args:
        weight_filepath: the checkpoint: a path, its bytes, or a binary file object (torchreid
            model-zoo file or training checkpoint; see :func:`model.checkpoint.load_osnet`).
        batch_size: crops per forward pass; None picks the measured best for the backend/device
            (on a GPU, what its memory allows): :func:`model.policy.plan_runtime`.
        GPU: True = CUDA (error if absent), False = CPU, None = CUDA when available.
        arch: OSNet variant name, or None to infer it from the weights (the original tool always
            built ``osnet_ibn_x1_0``; inference gives the same for those weights).
        backend: "auto" (ONNX Runtime on CPU, torch on CUDA), "torch" or "onnxruntime".
        precision: "fp32"; "fp16" on CUDA; "bf16" on CUDA, or (opt-in, OpenVINO) on CPU cores
            with AVX512-BF16/AMX: see :func:`model.policy.check_runtime`.
        normalize: L2-normalise every feature to unit length (off by default, as in the original
            tool). The mean/std standardisation of the input is ``norm_mean``/``norm_std``.
        channel_order: "rgb" or "bgr" for the crops' channels.
        threads: CPU threads for the backend (default: all cores available to the process).
        overlap_preprocessing: resize the next chunk on a helper thread while the network runs
            the current one. None = on for CUDA (the CPU would idle while the GPU works), off on
            CPU (the backend already uses every core).
        patch_height, patch_width: network input size (the crop is resized to it); default 256x128.
        norm_mean, norm_std: per-channel standardisation of the input; default ImageNet's.
        num_classes: accepted for compatibility and ignored: it sized the identity classifier,
            which feature extraction never uses (the checkpoint's classifier is dropped).
        input_width, input_height: accepted for compatibility and unused: crops are resized from
            whatever size they have.
    """

    def __init__(
        self,
        weight_filepath: CheckpointSource,
        *,
        batch_size: Optional[int] = None,
        GPU: Optional[bool] = None,
        arch: Optional[str] = None,
        backend: str = "auto",
        precision: str = "fp32",
        normalize: bool = False,
        channel_order: str = "rgb",
        threads: Optional[int] = None,
        overlap_preprocessing: Optional[bool] = None,
        patch_height: int = 256,
        patch_width: int = 128,
        norm_mean: Sequence[float] = IMAGENET_MEAN,
        norm_std: Sequence[float] = IMAGENET_STD,
        num_classes: Optional[int] = None,
        input_width: Optional[int] = None,
        input_height: Optional[int] = None,
    ) -> None:
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', not {channel_order!r}")
        if int(patch_height) <= 0 or int(patch_width) <= 0:
            raise ValueError(f"patch size must be positive, got {patch_height}x{patch_width}")
        self.input_size = (int(patch_width), int(patch_height))  # Pillow's (width, height)
        self.norm_mean = tuple(float(v) for v in norm_mean)
        self.norm_std = tuple(float(v) for v in norm_std)
        if len(self.norm_mean) != 3 or len(self.norm_std) != 3:
            raise ValueError("norm_mean and norm_std need three values (RGB)")
        self.channel_order = channel_order
        self.normalize = bool(normalize)
        self.num_classes = num_classes  # kept only so callers that read it still can

        plan = plan_here(backend, _device_for(GPU), precision, batch_size)
        self.model: OSNet = load_osnet(weight_filepath, arch=arch)
        self.arch: str = self.model.arch
        self.engine = FeatureEngine(
            self.model, plan, threads=threads, channel_order=channel_order, input_size=self.input_size,
            mean=self.norm_mean, std=self.norm_std,
        )
        self.backend: FeatureBackend = self.engine.runtime
        self.device = plan.device
        self.batch_size = plan.batch_size
        if overlap_preprocessing is None:
            overlap_preprocessing = plan.on_cuda
        self._prefetcher = ThreadPoolExecutor(1, "osnet-preprocess") if overlap_preprocessing else None
        log.info("OSNet %s on %s", self.arch, plan.describe())

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM

    def encode_batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Features of crops, float32 (N, 512), in input order; processed ``batch_size`` at a time.

        Raises:
            ValueError: a crop that is not a uint8 (H, W[, C]) array (None included).
        """
        crops = list(crops)
        if self._prefetcher is None:
            return self._maybe_normalized(self.engine.encode_crops(crops))
        out = np.empty((len(crops), FEATURE_DIM), dtype=np.float32)
        for start, pixels in self._resized_chunks(crops):
            out[start : start + len(pixels)] = self.engine.encode_pixels(pixels)
        return self._maybe_normalized(out)

    def resize(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Crops -> resized uint8 pixels (N, H, W, 3), as :meth:`encode_pixels` takes them."""
        return self.engine.resize(crops)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Features of already resized pixels (:meth:`resize`), float32 (N, 512)."""
        return self._maybe_normalized(self.engine.encode_pixels(pixels))

    def _maybe_normalized(self, features: np.ndarray) -> np.ndarray:
        return l2_normalize(features) if self.normalize else features

    def _resized_chunks(self, crops: list[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, pixels)`` per chunk, chunk i+1 resized on the prefetcher while i runs."""
        pending = None
        for start in range(0, len(crops), self.batch_size):
            upcoming = (start, self._prefetcher.submit(self.engine.resize, crops[start : start + self.batch_size]))
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = upcoming
        if pending is not None:
            yield pending[0], pending[1].result()

    def get_features(self, image_patches: Sequence[Any]) -> list[Optional[np.ndarray]]:
        """One float32 (512,) feature per crop, aligned with the input; None stays None.

        Crops are numpy uint8 arrays (H, W, C) with C in {1, 3, 4}, or (H, W); CPU torch tensors
        of that kind are accepted too, as the original tool took them.
        """
        patches = list(image_patches)
        present = [i for i, patch in enumerate(patches) if patch is not None]
        features = self.encode_batch([_as_array(patches[i]) for i in present])
        result: list[Optional[np.ndarray]] = [None] * len(patches)
        for row, index in enumerate(present):
            result[index] = features[row]
        return result

    def __repr__(self) -> str:
        return (
            f"OsNetEncoder(arch={self.arch!r}, backend={self.backend.name!r}, device={self.device!r}, "
            f"batch_size={self.batch_size}, normalize={self.normalize})"
        )


def _as_array(patch: Any) -> np.ndarray:
    if isinstance(patch, torch.Tensor):
        return patch.detach().cpu().numpy()
    return patch if isinstance(patch, np.ndarray) else np.asarray(patch)
