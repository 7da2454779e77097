"""Eager PyTorch: the runtime on CUDA, and the fallback on CPU where onnxruntime is absent."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from model.policy import check_runtime
from model.preprocess import check_pixels
from model.runtimes.base import check_batch
from model.runtimes.cpu import network_pool

__all__ = ["TorchBackend"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _use_ieee_fp32_on_cuda() -> None:
    """fp32 means fp32: turn off TF32 in cuDNN convolutions and cuBLAS matmuls.

    PyTorch lets cuDNN run fp32 convolutions in TF32 (10-bit mantissa) on Ampere and later by
    default, which moves OSNet's features by about 1e-3 relative: past the 0.99999 cosine this
    project promises for fp32. Process-wide, like every such switch in torch; fp16/bf16 runs
    are not affected (they do not use fp32 math in the convolutions).
    """
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):  # torch >= 2.9
        cudnn_conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


class TorchBackend:
    """Eager PyTorch under ``inference_mode``.

    On CUDA the input is copied from pinned memory without blocking, and fp16/bf16 run the
    network in that dtype with channels_last tensors (the layout tensor cores want); the output is
    returned as float32. fp32 on CUDA is IEEE fp32 (TF32 off). Reduced precision on CPU is
    refused (:func:`model.policy.check_runtime`): it is slower there, not faster.

    Besides float32 batches, :meth:`features_from_pixels` takes resized uint8 pixels and
    standardises them on the device: a quarter of the bytes to copy, and no standardisation work
    for the CPU, which feeds a GPU at its limit.
    """

    name = "torch"

    def __init__(
        self, module: nn.Module, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
        *, flush_denormals: bool = True,
    ) -> None:
        check_runtime(self.name, device, precision)
        self.device = device
        on_cuda = device != "cpu"
        if threads is not None:  # process-wide in torch: the last backend created wins
            torch.set_num_threads(threads)
        if on_cuda and precision == "fp32":
            _use_ieee_fp32_on_cuda()
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self._memory_format = torch.channels_last if precision != "fp32" else torch.contiguous_format
        if on_cuda or precision != "fp32":
            # Leave the caller's module untouched (it may also feed another backend).
            module = copy.deepcopy(module)
        self.module = module.eval().to(device=self.device, dtype=self.dtype, memory_format=self._memory_format)
        self._pin = on_cuda
        self._standardization: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # On CPU the network runs on one worker thread with denormals flushed; the OpenMP threads
        # torch starts from it inherit the mode. The calling thread's mode is left alone.
        self.flush_denormals = bool(flush_denormals) and not on_cuda
        self._cpu_runner = None if on_cuda else network_pool(1, "osnet-torch", self.flush_denormals, torch.get_num_threads())

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self._pin:
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _forward(self, tensor: torch.Tensor) -> np.ndarray:
        tensor = tensor.to(dtype=self.dtype, memory_format=self._memory_format)
        with torch.inference_mode():
            features = self.module(tensor)
        return features.float().cpu().numpy()

    def _run(self, tensor: torch.Tensor) -> np.ndarray:
        if self._cpu_runner is None:
            return self._forward(tensor)
        return self._cpu_runner.submit(self._forward, tensor).result()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self._to_device(check_batch(batch)))

    def standardize_pixels(self, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) on the device, equal bit for bit to
        :func:`model.preprocess.standardize_batch` (the same three correctly rounded float32
        operations; divisors are device tensors, since torch turns division by a Python scalar
        into multiplication by its reciprocal, which rounds differently). The result is an
        NCHW view of NHWC memory: channels_last, as reduced precision wants it.
        """
        check_pixels(pixels)
        key = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        constants = self._standardization.get(key)
        if constants is None:
            as_column = lambda values: torch.tensor(values, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            constants = (as_column([255.0] * 3), as_column(key[0]), as_column(key[1]))
            self._standardization[key] = constants
        full_scale, mean_t, std_t = constants
        with torch.inference_mode():
            tensor = self._to_device(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
            return tensor.to(torch.float32).div_(full_scale).sub_(mean_t).div_(std_t)

    def features_from_pixels(self, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        """Features of resized uint8 (N, H, W, 3) pixels, standardised on the device."""
        return self._run(self.standardize_pixels(pixels, mean, std))
