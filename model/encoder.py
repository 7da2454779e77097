"""``OsNetEncoder``: crops in, 512-d OSNet features out, compatible with the original tool.

The original tool's constructor took ``input_width, input_height, weight_filepath, batch_size,
num_classes, patch_height, patch_width, norm_mean, norm_std, GPU``; every one of those keywords is
still accepted, so existing callers keep working, and ``get_features`` keeps its contract (one
feature per crop, in order). What changed underneath: weights are read safely and strictly (see
:mod:`model.checkpoint`), the architecture is inferred from them, batches are really batched, and
on CPU the network runs on ONNX Runtime by default.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from model.backends import FeatureBackend, create_backend, cuda_batch_size, default_batch_size
from model.checkpoint import CheckpointSource, load_osnet
from model.osnet import FEATURE_DIM, OSNet
from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_pixels, normalize_batch, resize_batch, to_rgb

__all__ = ["OsNetEncoder"]

log = logging.getLogger(__name__)


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
        batch_size: crops per forward pass; None picks the measured best for the backend/device.
        GPU: True = CUDA (error if absent), False = CPU, None = CUDA when available.
        arch: OSNet variant name, or None to infer it from the weights (the original tool always
            built ``osnet_ibn_x1_0``; inference gives the same for those weights).
        backend: "auto" (ONNX Runtime on CPU, torch on CUDA), "torch" or "onnxruntime".
        precision: "fp32"; "fp16" on CUDA; "bf16" on CUDA, or (opt-in, OpenVINO) on CPU cores
            with AVX512-BF16/AMX: see :func:`model.backends.check_precision`.
        normalize: L2-normalise every feature (off by default, as in the original tool).
        channel_order: "rgb" or "bgr" for the crops' channels.
        threads: CPU threads for the backend (default: all cores available to the process).
        overlap_preprocessing: resize the next chunk on a helper thread while the network runs
            the current one. None = on for CUDA (the CPU would idle while the GPU works), off on
            CPU (the backend already uses every core).
        patch_height, patch_width: network input size (the crop is resized to it); default 256x128.
        norm_mean, norm_std: per-channel normalisation; default ImageNet's.
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
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, not {batch_size!r}")
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

        device = _device_for(GPU)
        self.model: OSNet = load_osnet(weight_filepath, arch=arch)
        self.arch: str = self.model.arch
        self.backend: FeatureBackend = create_backend(
            self.model, backend=backend, device=device, precision=precision, threads=threads
        )
        self.device = self.backend.device
        if batch_size is None:  # on a GPU, what its memory allows
            on_cuda = self.device.startswith("cuda")
            batch_size = cuda_batch_size(self.device) if on_cuda else default_batch_size(self.backend.name, self.device)
        self.batch_size = batch_size
        # On a GPU the CPU only resizes; the device normalises (same values, a quarter of the bytes).
        self._normalize_on_device = self.device.startswith("cuda") and hasattr(self.backend, "features_from_pixels")
        if overlap_preprocessing is None:
            overlap_preprocessing = self.device.startswith("cuda")
        self._prefetcher = ThreadPoolExecutor(1, "osnet-preprocess") if overlap_preprocessing else None
        log.info(
            "OSNet %s on %s/%s (%s), batch %d", self.arch, self.backend.name, self.device, precision, self.batch_size
        )

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM

    def encode_batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Features of crops, float32 (N, 512), in input order; processed ``batch_size`` at a time.

        Raises:
            ValueError: a crop that is not a uint8 (H, W[, C]) array (None included).
        """
        crops = list(crops)
        if self.preprocesses_in_network_threads:
            for crop in crops:  # every bad crop refused before any work, as resize_batch does
                to_rgb(crop, self.channel_order)
            return self._maybe_normalized(self.backend.map_crops(self._prepare_one, crops))
        out = np.empty((len(crops), FEATURE_DIM), dtype=np.float32)
        for start, prepared in self._prepared_chunks(crops):
            out[start : start + len(prepared)] = self._features(prepared)
        return self._maybe_normalized(out)

    @property
    def preprocesses_in_network_threads(self) -> bool:
        """Whether :meth:`encode_batch` resizes and normalises each crop on the thread that then
        runs it through the network (CPU backends with a thread pool: ONNX Runtime, OpenVINO), so
        the preprocessing is spread over every core as the network is. Same values bit for bit
        as :meth:`resize` then :meth:`encode_pixels`."""
        return hasattr(self.backend, "map_crops") and not self.device.startswith("cuda")

    def _prepare_one(self, crop: np.ndarray) -> np.ndarray:
        return self._prepare([crop])

    def resize(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Crops -> resized uint8 pixels (N, H, W, 3), as :meth:`encode_pixels` takes them."""
        return resize_batch(crops, channel_order=self.channel_order, size=self.input_size)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Features of already resized pixels (:meth:`resize`), float32 (N, 512).

        The split lets the resize, the CPU-heavy half, run where the crops are (each pipeline
        worker process) while a model shared by a machine's processes only normalises and runs
        the network: it receives a quarter of the float32 bytes and does none of the resizing.
        """
        check_pixels(pixels, self.input_size)
        out = np.empty((len(pixels), FEATURE_DIM), dtype=np.float32)
        for start in range(0, len(pixels), self.batch_size):
            chunk = pixels[start : start + self.batch_size]
            out[start : start + len(chunk)] = self._features(self._normalized(chunk))
        return self._maybe_normalized(out)

    def _maybe_normalized(self, features: np.ndarray) -> np.ndarray:
        if self.normalize:
            features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), np.float32(1e-12))
        return features

    def _normalized(self, pixels: np.ndarray) -> np.ndarray:
        """Resized pixels as the backend takes them: as they are where the device normalises,
        else the float32 network input."""
        if self._normalize_on_device:
            return pixels
        return normalize_batch(pixels, mean=self.norm_mean, std=self.norm_std)

    def _prepare(self, chunk: Sequence[np.ndarray]) -> np.ndarray:
        """The CPU's share of the preprocessing of a chunk of crops."""
        return self._normalized(self.resize(chunk))

    def _features(self, prepared: np.ndarray) -> np.ndarray:
        if self._normalize_on_device:
            return self.backend.features_from_pixels(prepared, self.norm_mean, self.norm_std)
        return self.backend(prepared)

    def _prepared_chunks(self, crops: list[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, batch)`` per chunk; with a prefetcher, chunk i+1 is prepared while i runs."""
        starts = range(0, len(crops), self.batch_size)
        if self._prefetcher is None:
            for start in starts:
                yield start, self._prepare(crops[start : start + self.batch_size])
            return
        pending = None
        for start in starts:
            upcoming = (start, self._prefetcher.submit(self._prepare, crops[start : start + self.batch_size]))
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
