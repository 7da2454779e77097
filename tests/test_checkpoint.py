"""Checkpoint reading: every real-world form loads identically; everything else is a clear error."""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from model import CheckpointError, build_osnet, infer_architecture, load_osnet, read_state_dict

STEM = "osnet_x0_25_msmt17"


@pytest.fixture(scope="module")
def weights_path(shared_weights_dir: Path) -> Path:
    return shared_weights_dir / f"{STEM}.pth"


@pytest.fixture(scope="module")
def plain_state(weights_path: Path) -> "OrderedDict[str, torch.Tensor]":
    return torch.load(weights_path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.randn(3, 3, 256, 128, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def expected_features(weights_path: Path, probe: torch.Tensor) -> np.ndarray:
    return _features(load_osnet(weights_path), probe)


def _features(model: torch.nn.Module, probe: torch.Tensor) -> np.ndarray:
    assert not model.training
    with torch.inference_mode():
        return model(probe).numpy()


def _saved(obj, tmp_path: Path, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_loaded_model_has_exactly_the_file_weights(weights_path, plain_state):
    model = load_osnet(weights_path)
    loaded = model.state_dict()
    for key, tensor in plain_state.items():
        if key.startswith("classifier."):
            continue
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("form", ["path_str", "bytes", "bytearray", "file_object", "wrapped", "prefixed", "wrapped_prefixed"])
def test_every_checkpoint_form_gives_identical_features(form, weights_path, plain_state, probe, expected_features, tmp_path):
    prefixed = OrderedDict((f"module.{k}", v) for k, v in plain_state.items())
    training = {"epoch": 60, "rank1": 0.5, "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4}]}}
    if form == "path_str":
        source = str(weights_path)
    elif form == "bytes":
        source = weights_path.read_bytes()
    elif form == "bytearray":
        source = bytearray(weights_path.read_bytes())
    elif form == "file_object":
        source = io.BytesIO(weights_path.read_bytes())
    elif form == "wrapped":
        source = _saved({"state_dict": plain_state, **training}, tmp_path)
    elif form == "prefixed":
        source = _saved(prefixed, tmp_path)
    else:
        source = _saved({"state_dict": prefixed, **training}, tmp_path)
    np.testing.assert_array_equal(_features(load_osnet(source), probe), expected_features)


def test_read_state_dict_strips_prefix_and_keeps_tensors(weights_path, plain_state, tmp_path):
    path = _saved({"state_dict": OrderedDict((f"module.{k}", v) for k, v in plain_state.items()), "epoch": 1}, tmp_path)
    state = read_state_dict(path)
    assert list(state) == list(plain_state)
    assert all(torch.equal(state[k], plain_state[k]) for k in state)


def test_explicit_matching_arch_loads(weights_path):
    assert load_osnet(weights_path, arch="osnet_x0_25").arch == "osnet_x0_25"


@pytest.mark.parametrize("arch", ["osnet_x1_0", "osnet_x0_5", "osnet_ibn_x1_0"])
def test_explicit_wrong_arch_is_an_error(weights_path, arch):
    with pytest.raises(CheckpointError, match=f"does not fit {arch}.*look like osnet_x0_25") as info:
        load_osnet(weights_path, arch=arch)
    assert "conv1.conv.weight" in str(info.value)  # the stem width differs: named with shapes


def test_unknown_arch_name(weights_path):
    with pytest.raises(ValueError, match="unknown OSNet architecture"):
        load_osnet(weights_path, arch="resnet50")


def test_x1_0_weights_into_ibn_name_the_instance_norm_keys(tmp_path):
    path = _saved(build_osnet("osnet_x1_0").state_dict(), tmp_path)
    assert infer_architecture(read_state_dict(path)) == "osnet_x1_0"
    with pytest.raises(CheckpointError) as info:
        load_osnet(path, arch="osnet_ibn_x1_0")
    message = str(info.value)
    assert "4 missing keys" in message
    for key in ("conv2.0.IN.weight", "conv2.0.IN.bias", "conv2.1.IN.weight", "conv2.1.IN.bias"):
        assert key in message
    assert "conv1.bn.running_mean" in message  # unexpected: the IBN stem has no running stats


def test_ibn_weights_into_x1_0_is_an_error(shared_weights_dir):
    with pytest.raises(CheckpointError, match="conv2.0.IN.weight"):
        load_osnet(shared_weights_dir / "osnet_ibn_x1_0_random.pth", arch="osnet_x1_0")


def test_missing_keys_are_named(plain_state, tmp_path):
    state = OrderedDict(plain_state)
    del state["conv3.0.conv2c.1.bn.running_var"], state["fc.0.bias"]
    with pytest.raises(CheckpointError, match="2 missing keys") as info:
        load_osnet(_saved(state, tmp_path))
    assert "conv3.0.conv2c.1.bn.running_var" in str(info.value) and "fc.0.bias" in str(info.value)


def test_unexpected_keys_are_named(plain_state, tmp_path):
    state = OrderedDict(plain_state)
    state["head.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected keys: head.extra.weight"):
        load_osnet(_saved(state, tmp_path))


def test_wrong_shapes_are_named(plain_state, tmp_path):
    state = OrderedDict(plain_state)
    state["fc.0.weight"] = torch.zeros(512, 64)
    with pytest.raises(CheckpointError, match=r"fc.0.weight \(512, 64\) \(expected \(512, 128\)\)"):
        load_osnet(_saved(state, tmp_path))


def test_classifier_of_any_size_is_ignored(plain_state, tmp_path, probe, expected_features):
    state = OrderedDict(plain_state)
    state["classifier.weight"], state["classifier.bias"] = torch.zeros(7, 512), torch.zeros(7)
    np.testing.assert_array_equal(_features(load_osnet(_saved(state, tmp_path)), probe), expected_features)
    del state["classifier.weight"], state["classifier.bias"]
    np.testing.assert_array_equal(_features(load_osnet(_saved(state, tmp_path)), probe), expected_features)


def test_truncated_file(weights_path, tmp_path):
    data = weights_path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_osnet(truncated)
    with pytest.raises(CheckpointError):
        read_state_dict(data[:100])


def test_random_bytes_and_empty_input():
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for data in (noise, b"", b"not a checkpoint"):
        with pytest.raises(CheckpointError):
            read_state_dict(data)


class _CreatesFile:
    """A pickle payload: unpickling it calls open(path, "w"), i.e. runs code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("container", ["torch_save", "raw_pickle"])
def test_malicious_pickle_is_refused_without_running(container, tmp_path):
    marker = tmp_path / "pwned"
    payload = {"conv1.conv.weight": _CreatesFile(str(marker))}
    path = tmp_path / "evil.pth"
    if container == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="safe loader"):
        load_osnet(path)
    with pytest.raises(CheckpointError):
        read_state_dict(path.read_bytes())
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj, message",
    [
        (torch.zeros(3), "holds a Tensor"),
        ([torch.zeros(3)], "holds a list"),
        ({}, "empty"),
        ({"conv1.conv.weight": 3}, "not name -> tensor"),
        ({"state_dict": {"a": "b"}}, "not name -> tensor"),
    ],
)
def test_non_state_dicts(obj, message, tmp_path):
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(_saved(obj, tmp_path))


def test_state_dict_of_something_else(tmp_path):
    path = _saved({"layer.weight": torch.zeros(2, 2)}, tmp_path)
    with pytest.raises(CheckpointError, match="not an OSNet state dict"):
        load_osnet(path)


def test_missing_file_and_bad_source_types(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pth")
    with pytest.raises(TypeError):
        read_state_dict(12345)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
