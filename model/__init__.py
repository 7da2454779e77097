"""OSNet person re-identification features: model, safe checkpoint loading, preprocessing, the
runtime policy, runtimes, the pipeline's engine and the seed-compatible encoder.

No Beam here: the pipeline's transforms wrap these, and they can be used and tested on their own.

The names below are imported on first use (PEP 562), so ``import model.policy`` or running an
exported graph with ONNX Runtime does not import torch (about 180 MB and 2-3 s per process);
``from model import OsNetEncoder`` works as before.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "CheckpointError": "model.contract",
    "infer_architecture": "model.checkpoint",
    "load_osnet": "model.checkpoint",
    "read_state_dict": "model.checkpoint",
    "OsNetEncoder": "model.encoder",
    "l2_normalize": "model.encoder",
    "FeatureEngine": "model.engine",
    "FEATURE_DIM": "model.contract",
    "ARCHITECTURES": "model.osnet",
    "OSNet": "model.osnet",
    "build_osnet": "model.osnet",
    "RuntimePlan": "model.policy",
    "plan_here": "model.policy",
    "plan_runtime": "model.policy",
    "IMAGENET_MEAN": "model.preprocess",
    "IMAGENET_STD": "model.preprocess",
    "preprocess_batch": "model.preprocess",
    "FeatureBackend": "model.runtimes",
    "create_backend": "model.runtimes",
}

__all__ = [
    "ARCHITECTURES",
    "FEATURE_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "FeatureBackend",
    "FeatureEngine",
    "OSNet",
    "OsNetEncoder",
    "RuntimePlan",
    "build_osnet",
    "create_backend",
    "infer_architecture",
    "l2_normalize",
    "load_osnet",
    "plan_here",
    "plan_runtime",
    "preprocess_batch",
    "read_state_dict",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from model.checkpoint import infer_architecture, load_osnet, read_state_dict
    from model.contract import FEATURE_DIM, CheckpointError
    from model.encoder import OsNetEncoder, l2_normalize
    from model.engine import FeatureEngine
    from model.osnet import ARCHITECTURES, OSNet, build_osnet
    from model.policy import RuntimePlan, plan_here, plan_runtime
    from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_batch
    from model.runtimes import FeatureBackend, create_backend
