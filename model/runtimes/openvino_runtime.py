"""OpenVINO on the graph exported from the loaded module, computing in bf16 (CPU only, opt-in)."""
from __future__ import annotations

import os
import tempfile
import threading
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from model.export import BF16_PROBE_MIN_COSINE, check_export, export_onnx
from model.policy import check_runtime
from model.runtimes.base import check_batch
from model.runtimes.cpu import PendingFeatures, default_threads, map_crops, network_pool, submit_crops

__all__ = ["OpenVinoBackend"]


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeError(
            "precision='bf16' on CPU runs on OpenVINO, which is not installed (pip install 'openvino>=2024.0')"
        ) from exc
    return openvino


class OpenVinoBackend:
    """OpenVINO on the graph exported from the module, computing in bf16 (CPU only, opt-in).

    Like :class:`~model.runtimes.onnx_runtime.OnnxRuntimeBackend` on CPU: one single-crop
    inference per crop, run concurrently on ``threads`` Python threads (``InferRequest.infer``
    releases the GIL), each with its own request on a model compiled for one crop of the batch's
    height and width (compiled on first use of a size; static shapes are what OpenVINO's CPU
    kernels are fastest on). OpenVINO runs the requests on its own stream threads (one per core),
    with its denormals switch on; the Python threads only wait. Features are returned as float32.
    """

    name = "openvino"

    def __init__(self, module: nn.Module, device: str = "cpu", threads: int | None = None, precision: str = "bf16") -> None:
        check_runtime(self.name, device, precision)
        ov = _openvino()
        self.device, self.precision = device, precision
        self.threads = threads or default_threads()
        self._core = ov.Core()
        with tempfile.TemporaryDirectory(prefix="osnet-openvino-") as folder:
            path = os.path.join(folder, "osnet.onnx")
            with open(path, "wb") as graph:
                graph.write(export_onnx(module))
            self._model = self._core.read_model(path)
        self._config = {
            "INFERENCE_PRECISION_HINT": "bf16",
            "PERFORMANCE_HINT": "THROUGHPUT",
            "NUM_STREAMS": str(self.threads),
            "INFERENCE_NUM_THREADS": str(self.threads),
            # OpenVINO computes on its own stream threads, not the caller's: its own switch sets
            # flush-to-zero / denormals-are-zero there.
            "CPU_DENORMALS_OPTIMIZATION": "YES",
        }
        self._compiled: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool = network_pool(self.threads, "osnet-openvino")
        check_export(self, module, min_cosine=BF16_PROBE_MIN_COSINE, what="the OpenVINO bf16 model")

    def _compiled_for(self, height: int, width: int) -> Any:
        with self._lock:
            compiled = self._compiled.get((height, width))
            if compiled is None:
                model = self._model.clone()
                model.reshape([1, 3, height, width])
                compiled = self._core.compile_model(model, "CPU", self._config)
                self._compiled[(height, width)] = compiled
        return compiled

    def _run_one(self, crop: np.ndarray) -> np.ndarray:
        key = crop.shape[2:]
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(key)
        if request is None:
            request = requests[key] = self._compiled_for(*key).create_infer_request()
        request.infer({0: crop})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch)
        return map_crops(self._pool, self._run_one, np.split(batch, len(batch)) if len(batch) else [])

    def submit_crops(self, prepare: Callable[[Any], np.ndarray], crops: Sequence[Any]) -> PendingFeatures:
        """As :meth:`OnnxRuntimeBackend.submit_crops`: each crop prepared and run on one pool
        thread, started at once."""
        return submit_crops(self._pool, lambda crop: self._run_one(check_batch(prepare(crop))), crops)
