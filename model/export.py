"""The loaded OSNet module as an ONNX graph, in memory, checked against torch before use.

The ONNX and OpenVINO runtimes are built from the *same* loaded module as torch: the graph is
exported when the runtime is created, so there is no second weights file to keep in sync.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["check_export", "export_onnx", "export_onnx_dynamo"]

_INPUT_NAME = "images"
_OUTPUT_NAME = "features"
_PROBE_SHAPE = (2, 3, 256, 128)
# Batch, height and width are left free in the graph (no cost against a fixed size in the
# measurements), so one session serves any patch size the encoder is configured with.
_DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
#: An fp32 export computes what torch does up to rounding.
PROBE_MIN_COSINE = 0.9999
#: bf16 keeps 8 bits of mantissa, and a random probe through the network moves far more than
#: trained weights on real crops do (those are the fidelity figures that matter: bench/README.md,
#: "CPU speed switches"); an export gone wrong gives about 0.
BF16_PROBE_MIN_COSINE = 0.8


def check_export(
    runtime: Callable[[np.ndarray], np.ndarray], module: nn.Module, min_cosine: float = PROBE_MIN_COSINE,
    what: str = "the ONNX export",
) -> None:
    """Refuse an exported model that does not compute what the torch module computes."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(_PROBE_SHAPE, generator=generator)
    reference_module = copy.deepcopy(module).float().cpu().eval()
    with torch.inference_mode():
        expected = reference_module(probe).numpy()
    actual = runtime(probe.numpy())
    cosine = np.sum(expected * actual, axis=1) / (
        np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1) + 1e-12
    )
    if actual.shape != expected.shape or not np.all(cosine >= min_cosine):
        raise RuntimeError(f"{what} does not match the torch module (cosine {cosine.tolist()}); use backend='torch'")


def export_onnx(module: nn.Module) -> bytes:
    """Serialise the eval-mode module to ONNX in memory, batch and image size dynamic.

    The TorchScript exporter is used while torch still ships it: it is much faster than the
    torch.export-based one (``dynamo=True``, the default since torch 2.9) for the same,
    numerically identical graph. It warns that InstanceNorm is exported with instance statistics
    ("train=True"); that is what InstanceNorm2d(track_running_stats=False) computes in eval mode
    too, so the warning is silenced. :func:`check_export` guards both exporters.
    """
    module = copy.deepcopy(module).float().cpu().eval()
    example = (torch.zeros(_PROBE_SHAPE),)
    try:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                buffer,
                dynamo=False,
                input_names=[_INPUT_NAME],
                output_names=[_OUTPUT_NAME],
                dynamic_axes={_INPUT_NAME: _DYNAMIC_AXES, _OUTPUT_NAME: {0: "batch"}},
                opset_version=17,
            )
        return buffer.getvalue()
    except Exception:  # legacy exporter removed or broken: use torch.export
        return export_onnx_dynamo(module)


def export_onnx_dynamo(module: nn.Module) -> bytes:
    """The torch.export-based exporter (needs onnxscript)."""
    module = copy.deepcopy(module).float().cpu().eval()
    example = (torch.zeros(_PROBE_SHAPE),)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=[_INPUT_NAME],
            output_names=[_OUTPUT_NAME],
            dynamic_shapes=({axis: torch.export.Dim.AUTO for axis in _DYNAMIC_AXES},),
            verbose=False,
        )
    return program.model_proto.SerializeToString()
