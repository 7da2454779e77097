"""``FeatureEngine``: the pipeline's view of the model, resized pixels (or crops) in, features out.

Built from a loaded module and a :class:`~model.policy.RuntimePlan`, it runs the planned runtime
in chunks of the plan's batch size. It only standardises (mean/std) the network input; L2
normalisation of features is the seed-compatible facade's option (:mod:`model.encoder`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from model.contract import FEATURE_DIM
from model.policy import RuntimePlan
from model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_SIZE,
    check_pixels,
    network_input,
    prepare_resize,
    resize_batch,
    standardize_batch,
    to_rgb,
)
from model.runtimes import FeatureBackend, runtime_for
from model.runtimes.cpu import PendingFeatures

if TYPE_CHECKING:
    from torch import nn

__all__ = ["FeatureEngine"]


class FeatureEngine:
    """Features of crops or resized pixels, float32 (N, 512), in input order.

    Args:
        module: an eval-mode OSNet (:func:`model.checkpoint.load_osnet`); None with ``runtime``.
        plan: how it runs (:func:`model.policy.plan_runtime`); its batch size is the chunk of
            every network call.
        threads: CPU threads for the runtime (default: every core the process may use).
        channel_order: "rgb" or "bgr", the crops' channels.
        input_size: (width, height) the crops are resized to, Pillow's order.
        mean, std: per-channel standardisation of the [0, 1] pixel values.
    """

    def __init__(
        self,
        module: Optional[nn.Module],
        plan: RuntimePlan,
        *,
        runtime: Optional[FeatureBackend] = None,
        threads: int | None = None,
        channel_order: str = "rgb",
        input_size: tuple[int, int] = INPUT_SIZE,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.plan = plan
        self.batch_size = plan.batch_size
        self.channel_order = channel_order
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if (module is None) == (runtime is None):
            raise ValueError("FeatureEngine needs a module or a runtime, not both")
        self.runtime: FeatureBackend = runtime if runtime is not None else runtime_for(module, plan, threads)
        prepare_resize(self.input_size)  # compiled here, once, not on the first crops' threads
        # On a GPU the CPU only resizes; the device standardises (same values, a quarter of the bytes).
        self._standardize_on_device = plan.on_cuda and hasattr(self.runtime, "features_from_pixels")

    @property
    def device(self) -> str:
        return self.plan.device

    @property
    def preprocesses_in_network_threads(self) -> bool:
        """Whether :meth:`encode_crops` resizes and standardises each crop on the thread that then
        runs it through the network (CPU runtimes with a thread pool: ONNX Runtime, OpenVINO), so
        the preprocessing is spread over every core as the network is. Same values bit for bit
        as :meth:`resize` then :meth:`encode_pixels`."""
        return hasattr(self.runtime, "submit_crops") and not self.plan.on_cuda

    def resize(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Crops -> resized uint8 pixels (N, H, W, 3), as :meth:`encode_pixels` takes them."""
        return resize_batch(crops, channel_order=self.channel_order, size=self.input_size)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Features of already resized pixels (:meth:`resize`), ``batch_size`` at a time.

        The split lets the resize, the CPU-heavy half, run where the crops are (each pipeline
        worker process) while a model shared by a machine's processes only standardises and runs
        the network: it receives a quarter of the float32 bytes and does none of the resizing.
        """
        check_pixels(pixels, self.input_size)
        out = np.empty((len(pixels), FEATURE_DIM), dtype=np.float32)
        for start in range(0, len(pixels), self.batch_size):
            chunk = pixels[start : start + self.batch_size]
            out[start : start + len(chunk)] = self._features(chunk)
        return out

    def encode_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Features of crops, resized here ``batch_size`` at a time, or each on its network thread
        (:attr:`preprocesses_in_network_threads`).

        Raises:
            ValueError: a crop that is not a uint8 (H, W[, C]) array (None included).
        """
        return self.submit_crops(crops).result()

    def submit_crops(self, crops: Sequence[np.ndarray]) -> PendingFeatures:
        """:meth:`encode_crops` started: with :attr:`preprocesses_in_network_threads` it returns
        as soon as the crops are handed to the network's threads, so the caller can prepare the
        next batch while they run; otherwise it computes them first. Either way the features come
        from the result's ``result()``, in input order.

        Raises:
            ValueError: at once, a crop that is not a uint8 (H, W[, C]) array (None included),
                before any work starts. A failure of the network is raised by ``result()``.
        """
        crops = list(crops)
        if self.preprocesses_in_network_threads:
            for crop in crops:  # every bad crop refused before any work, as resize_batch does
                to_rgb(crop, self.channel_order)
            return self.runtime.submit_crops(self._network_input_of_one, crops)
        out = np.empty((len(crops), FEATURE_DIM), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            out[start : start + len(chunk)] = self._features(self.resize(chunk))
        return PendingFeatures.settled(out)

    def _network_input_of_one(self, crop: np.ndarray) -> np.ndarray:
        return network_input(crop, self.channel_order, self.input_size, self.mean, self.std)

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        """One network call on resized pixels, standardised on the device or here."""
        if self._standardize_on_device:
            return self.runtime.features_from_pixels(pixels, self.mean, self.std)
        return self.runtime(standardize_batch(pixels, mean=self.mean, std=self.std))

    def __repr__(self) -> str:
        return f"FeatureEngine({self.plan.describe()})"
