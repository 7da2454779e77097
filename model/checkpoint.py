"""Safe checkpoint reading, architecture inference and strict loading of OSNet weights.

Safety: checkpoints are read with ``torch.load(..., weights_only=True)`` and nothing else, so a
file that is a malicious pickle is refused by torch's restricted unpickler before any of its code
runs. Strictness: every backbone tensor must be present with the right shape; a checkpoint that
does not fit is an error naming the keys, never a model left partly at random initialisation
(torchreid's own loader silently skips what does not match, which is how wrong features happen).
"""
from __future__ import annotations

import io
import os
from typing import IO, Any, Mapping, Union

import torch
from torch import Tensor

from model.contract import CheckpointError
from model.osnet import ARCHITECTURES, OSNet, build_osnet

__all__ = [
    "CheckpointError",
    "CheckpointSource",
    "infer_architecture",
    "load_osnet",
    "read_state_dict",
]

CheckpointSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

_MODULE_PREFIX = "module."  # added by nn.DataParallel / DistributedDataParallel when training
_CLASSIFIER_PREFIX = "classifier."  # identity classifier: dataset-specific, not used for features
_STEM_KEY = "conv1.conv.weight"
_STEM_WIDTHS = {64: "x1_0", 48: "x0_75", 32: "x0_5", 16: "x0_25"}
_MAX_KEYS_SHOWN = 12


def _name_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" ... ({more} more)" if more > 0 else "")


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(getattr(source, "name", None) or f"<{type(source).__name__}>")


def _load_object(source: CheckpointSource) -> Any:
    """``torch.load`` with the restricted unpickler; any failure becomes a CheckpointError."""
    where = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"checkpoint not found: {where}")
        target: Any = os.fspath(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        target = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        # Streams from remote file systems are often not seekable; torch.load needs seek.
        data = source.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"{where} must be opened in binary mode (read() returned {type(data).__name__})")
        target = io.BytesIO(bytes(data))
    else:
        raise TypeError(f"checkpoint source must be a path, bytes or a binary file object, not {type(source).__name__}")
    try:
        return torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by format
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{where} is not a readable PyTorch checkpoint (it is refused by the safe loader "
            f"torch.load(weights_only=True): corrupt, truncated, not a checkpoint, or it contains "
            f"objects other than tensors): {type(exc).__name__}: {reason}"
        ) from exc


def read_state_dict(source: CheckpointSource) -> dict[str, Tensor]:
    """Read a checkpoint into a plain ``{name: tensor}`` state dict, safely.

    Accepts a model-zoo file (a plain state dict) or a training checkpoint (a dict with a
    ``state_dict`` entry, plus ``epoch``, ``optimizer``, ...), with or without the ``module.`` prefix
    that (Distributed)DataParallel adds. Keys are returned without the prefix; the classifier, if
    any, is kept (``load_osnet`` drops it).

    Args:
        source: a path (str or PathLike), the file's bytes, or a binary file object.
    Raises:
        FileNotFoundError: a path that does not exist.
        CheckpointError: anything that is not a dict of tensors after unwrapping.
    """
    where = _describe(source)
    obj = _load_object(source)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a state dict of tensors")
    if not obj:
        raise CheckpointError(f"{where} holds an empty dict, not a state dict")
    not_tensors = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if not_tensors:
        raise CheckpointError(
            f"{where} is not a state dict: entries that are not name -> tensor: {_name_keys(not_tensors)}"
        )
    state: dict[str, Tensor] = {}
    for key, tensor in obj.items():
        name = key[len(_MODULE_PREFIX):] if key.startswith(_MODULE_PREFIX) else key
        if name in state:
            raise CheckpointError(f"{where} has key {name!r} both with and without the {_MODULE_PREFIX!r} prefix")
        state[name] = tensor
    return state


def infer_architecture(state_dict: Mapping[str, Tensor]) -> str:
    """Name the OSNet variant a state dict was saved from.

    The stem width (``conv1.conv.weight`` output channels 64/48/32/16) gives the width multiplier;
    InstanceNorm tensors (``*.IN.*`` or a stem norm without running statistics) mean IBN.
    """
    stem = state_dict.get(_STEM_KEY)
    if stem is None:
        raise CheckpointError(f"not an OSNet state dict: no {_STEM_KEY!r} (keys start {_name_keys(list(state_dict))})")
    if stem.ndim != 4 or tuple(stem.shape[1:]) != (3, 7, 7):
        raise CheckpointError(f"not an OSNet state dict: {_STEM_KEY} has shape {tuple(stem.shape)}, expected (C, 3, 7, 7)")
    width = _STEM_WIDTHS.get(int(stem.shape[0]))
    if width is None:
        raise CheckpointError(
            f"unknown OSNet width: {_STEM_KEY} has {stem.shape[0]} output channels "
            f"(known: {', '.join(f'{c} = {w}' for c, w in _STEM_WIDTHS.items())})"
        )
    has_instance_norm = any(".IN." in key for key in state_dict) or (
        "conv1.bn.weight" in state_dict and "conv1.bn.running_mean" not in state_dict
    )
    arch = f"osnet_ibn_{width}" if has_instance_norm else f"osnet_{width}"
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"the weights look like {arch}, which is not a known OSNet variant")
    return arch


def _layout_mismatch(model: OSNet, backbone: Mapping[str, Tensor]) -> list[str]:
    """Human-readable differences between a state dict and the model's layout (classifier excluded)."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(_CLASSIFIER_PREFIX)}
    missing = [k for k in expected if k not in backbone]
    unexpected = [k for k in backbone if k not in expected]
    wrong_shape = [
        f"{k} {tuple(backbone[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in backbone and backbone[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_name_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_name_keys(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} keys with the wrong shape: {_name_keys(wrong_shape)}")
    return problems


def load_osnet(source: CheckpointSource, arch: str | None = None) -> OSNet:
    """Build OSNet and load a checkpoint into it strictly; returns the model in eval mode on CPU.

    Args:
        source: a path, bytes or binary file object (see :func:`read_state_dict`).
        arch: a name from :data:`model.osnet.ARCHITECTURES`, or None to infer it from the weights.
            An explicit name the weights do not fit is an error, not a partial load.
    Raises:
        CheckpointError: unreadable file, or any missing, unexpected or wrong-shape backbone key.
        ValueError: unknown ``arch`` name.
    """
    state = read_state_dict(source)
    backbone = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIX)}
    if arch is None:
        arch = infer_architecture(state)
    elif arch not in ARCHITECTURES:
        raise ValueError(f"unknown OSNet architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    model = build_osnet(arch)
    problems = _layout_mismatch(model, backbone)
    if problems:
        try:
            hint = f"; the weights look like {infer_architecture(state)}"
        except CheckpointError:
            hint = ""
        raise CheckpointError(
            f"{_describe(source)} does not fit {arch}{hint}: " + "; ".join(problems)
        )
    # Classifier keys stay at their initial values: features never pass through the classifier.
    result = model.load_state_dict(backbone, strict=False)
    leftover = [k for k in result.missing_keys if not k.startswith(_CLASSIFIER_PREFIX)]
    if leftover or result.unexpected_keys:  # cannot happen after _layout_mismatch; belt and braces
        raise CheckpointError(f"incomplete load into {arch}: {_name_keys(leftover + result.unexpected_keys)}")
    return model.eval()
