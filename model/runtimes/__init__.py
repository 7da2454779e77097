"""Runtimes that turn a preprocessed batch into features, one a module: torch eager
(:mod:`.torch_eager`), ONNX Runtime (:mod:`.onnx_runtime`, fp32) and OpenVINO
(:mod:`.openvino_runtime`, CPU bf16, opt-in). Which one runs, where, in what precision, is
:mod:`model.policy`'s decision; this module only builds the one a plan names.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from model.policy import RuntimePlan, plan_here
from model.runtimes.base import FeatureBackend

if TYPE_CHECKING:
    from torch import nn

__all__ = ["FeatureBackend", "create_backend", "runtime_for", "runtime_for_graph"]


def runtime_for(module: nn.Module, plan: RuntimePlan, threads: int | None = None) -> FeatureBackend:
    """The runtime ``plan`` names, for ``module`` (an eval-mode OSNet); ``threads``: CPU threads
    for it (default: the cores this process may use)."""
    if plan.backend == "openvino":
        from model.runtimes.openvino_runtime import OpenVinoBackend

        return OpenVinoBackend(module, plan.device, threads, plan.precision)
    if plan.backend == "onnxruntime":
        from model.runtimes.onnx_runtime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(module, plan.device, threads)
    from model.runtimes.torch_eager import TorchBackend

    return TorchBackend(module, plan.device, plan.precision, threads)


def runtime_for_graph(graph: bytes, plan: RuntimePlan, threads: int | None = None) -> FeatureBackend:
    """The runtime ``plan`` names, on an exported ONNX graph (:mod:`model.graph_cache`) instead of
    a module: no torch in this process. ONNX Runtime only (the default CPU runtime and an fp32
    GPU one); the others run the module.

    Raises:
        ValueError: a plan for another backend.
    """
    if plan.backend != "onnxruntime":
        raise ValueError(f"an exported graph runs on onnxruntime only, not {plan.backend}: use runtime_for(module, ...)")
    from model.runtimes.onnx_runtime import OnnxRuntimeBackend

    return OnnxRuntimeBackend.from_graph(graph, plan.device, threads)


def create_backend(
    module: nn.Module,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
) -> FeatureBackend:
    """The runtime for these options on this machine (:func:`model.policy.plan_here`).

    Raises:
        RuntimeError: CUDA requested but unavailable; onnxruntime requested but not installed.
        ValueError: an unknown option, or a combination that cannot run.
    """
    return runtime_for(module, plan_here(backend, device, precision), threads)
