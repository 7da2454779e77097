"""Beam's RunInference, imported without torch.

``apache_beam.ml.inference.base`` imports its ``ModelManager`` (GPU memory management for models
shared between pipelines; this job does not use it) when it is imported, and that module imports
torch: about 180 MB of memory and 2-3 s in every SDK worker process, which on CPU runs an
exported graph with ONNX Runtime and needs no torch (:mod:`model.graph_cache`). Beam tolerates a
missing ``ModelManager`` (it catches the ImportError, and imports it again where it is used), so
the first import of ``base`` is made with the model manager's module marked absent, and the mark
is removed at once: a later ``import apache_beam.ml.inference.model_manager`` works as usual.

Also a Beam plugin (``--beam_plugins``, set by :mod:`pipeline.build`): SDK workers import it
before they unpickle the job's DoFns, one of which (RunInference's) lives in ``base``.
"""
from __future__ import annotations

import sys

__all__ = ["import_run_inference"]

_BASE = "apache_beam.ml.inference.base"
_MODEL_MANAGER = "apache_beam.ml.inference.model_manager"


def import_run_inference() -> None:
    """Import ``apache_beam.ml.inference.base`` (once) without its model manager's torch import."""
    if _BASE in sys.modules or _MODEL_MANAGER in sys.modules:
        return  # imported already: nothing is left to save
    sys.modules[_MODEL_MANAGER] = None  # type: ignore[assignment]  # "import ... halted": an ImportError
    try:
        __import__(_BASE)
    finally:
        if sys.modules.get(_MODEL_MANAGER, 0) is None:
            del sys.modules[_MODEL_MANAGER]


import_run_inference()
