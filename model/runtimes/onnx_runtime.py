"""ONNX Runtime on the graph exported from the loaded module (fp32): the default CPU runtime.

Built from a module (exported here, then checked against it), or from an already exported and
checked graph (:meth:`OnnxRuntimeBackend.from_graph`, :mod:`model.graph_cache`), which needs no
torch in the process.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from model.policy import check_runtime
from model.runtimes.base import check_batch
from model.runtimes.cpu import PendingFeatures, default_threads, network_pool, submit_crops

if TYPE_CHECKING:
    from torch import nn

__all__ = ["OnnxRuntimeBackend"]


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError("backend='onnxruntime' needs the onnxruntime package (pip install onnxruntime)") from exc
    return onnxruntime


class OnnxRuntimeBackend:
    """ONNX Runtime session on a graph exported from the module at construction (fp32 only).

    On CPU the session runs single-threaded, and a batch is split into single crops run
    concurrently on ``threads`` Python threads (default: every core this process may use;
    ``InferenceSession.run`` releases the GIL). OSNet's operators are small (depthwise and 1x1
    convolutions on small maps), so splitting one image over an intra-op pool pays a
    synchronisation per operator, while independent images keep every core busy without one,
    with identical features (bench/README.md, "Findings"). On CUDA the whole batch is one run. Several
    processes on one machine should split the cores between them via ``threads``.
    """

    name = "onnxruntime"

    def __init__(
        self, module: Optional[nn.Module], device: str = "cpu", threads: int | None = None, *,
        exporter: str = "auto", flush_denormals: bool = True, graph: Optional[bytes] = None,
    ) -> None:
        check_runtime(self.name, device, "fp32")
        if exporter not in ("auto", "dynamo"):
            raise ValueError(f"exporter must be 'auto' or 'dynamo', not {exporter!r}")
        if (module is None) == (graph is None):
            raise ValueError("give the module to export, or an exported graph (from_graph), not both")
        ort = _onnxruntime()
        self.device = device
        on_cpu = device == "cpu"
        if on_cpu:
            providers: list[Any] = ["CPUExecutionProvider"]
        else:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "backend='onnxruntime' on CUDA needs onnxruntime-gpu (CUDAExecutionProvider); "
                    f"available providers: {ort.get_available_providers()}"
                )
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        self.threads = threads or default_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if on_cpu else self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle workers sleep instead of spinning: with other busy processes on the machine (Beam
        # runs several SDK workers per VM) spinning threads steal the cores the work needs
        # (bench/README.md, "Findings": ORT spin-waiting; bench/results/variants_model_one_core_busy.json).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if module is not None:
            from model.export import export_onnx, export_onnx_dynamo

            graph = export_onnx(module) if exporter == "auto" else export_onnx_dynamo(module)
        self.session = ort.InferenceSession(graph, sess_options=options, providers=providers)
        self._input = self.session.get_inputs()[0].name
        # On CPU every run, one crop or many, is on the pool's threads, where denormals are flushed
        # (a single-threaded session computes on the thread that calls it); the caller's thread
        # keeps its mode. ORT's own "session.set_denormal_as_zero" only reaches its intra-op pool.
        self.flush_denormals = bool(flush_denormals) and on_cpu
        self._pool = network_pool(self.threads, "osnet-ort", self.flush_denormals) if on_cpu else None
        if module is not None:
            from model.export import check_export

            check_export(self, module)

    @classmethod
    def from_graph(
        cls, graph: bytes, device: str = "cpu", threads: int | None = None, *, flush_denormals: bool = True,
    ) -> "OnnxRuntimeBackend":
        """A session on ``graph``, ONNX bytes already exported and checked against the module
        (:func:`model.graph_cache.exported_graph` does both, in a child process): no torch here."""
        return cls(None, device, threads, flush_denormals=flush_denormals, graph=graph)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self._input: batch})
        return np.asarray(features, dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch)
        if self._pool is None:
            return self._run(batch)
        if len(batch) < 2:
            return self._pool.submit(self._run, batch).result()
        return np.concatenate(list(self._pool.map(self._run, np.split(batch, len(batch)))))

    def submit_crops(self, prepare: Callable[[Any], np.ndarray], crops: Sequence[Any]) -> PendingFeatures:
        """Features of ``crops`` started on the pool, returned at once: each crop prepared
        (``prepare(crop)`` -> float32 (1, 3, H, W)) and run on the same pool thread, so the
        preprocessing uses every core too, between inferences, instead of the caller's thread
        alone (Pillow and numpy release the GIL). CPU only."""
        if self._pool is None:
            raise RuntimeError("submit_crops runs on the CPU pool; on CUDA call the backend on a batch")
        return submit_crops(self._pool, lambda crop: self._run(check_batch(prepare(crop))), crops)
