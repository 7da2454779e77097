"""Runtimes: the same module gives the same features on every backend; options are validated."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from model import FeatureBackend, create_backend
from model.runtimes.onnx_runtime import OnnxRuntimeBackend
from model.runtimes.torch_eager import TorchBackend
from testkit.reference import row_cosine


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 3, 256, 128)).astype(np.float32)


@pytest.fixture(scope="module")
def expected(module, batch) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(batch)).numpy()


@pytest.fixture(scope="module")
def onnx_backend(module) -> OnnxRuntimeBackend:
    return create_backend(module, backend="onnxruntime", device="cpu")


def test_torch_backend(module, batch, expected):
    backend = create_backend(module, backend="torch", device="cpu")
    assert isinstance(backend, TorchBackend) and isinstance(backend, FeatureBackend)
    assert (backend.name, backend.device) == ("torch", "cpu")
    out = backend(batch)
    assert out.dtype == np.float32 and out.shape == (5, 512)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_onnxruntime_backend_with_dynamic_batch_and_size(module, onnx_backend, batch, expected):
    assert isinstance(onnx_backend, FeatureBackend)
    assert (onnx_backend.name, onnx_backend.device) == ("onnxruntime", "cpu")
    for size in (1, 2, 5):  # exported with batch 2: other sizes must work too
        out = onnx_backend(batch[:size])
        assert out.dtype == np.float32 and out.shape == (size, 512)
        np.testing.assert_allclose(out, expected[:size], atol=1e-4)
        assert row_cosine(out, expected[:size]).min() >= 0.99999
    small = np.ascontiguousarray(batch[:2, :, :128, :64])  # another patch size, same session
    with torch.no_grad():
        small_expected = module(torch.from_numpy(small)).numpy()
    np.testing.assert_allclose(onnx_backend(small), small_expected, atol=1e-4)


def test_torch_export_based_exporter_also_matches(module, batch, expected):
    """The fallback exporter (torch.export + onnxscript) gives the same model."""
    backend = OnnxRuntimeBackend(module, "cpu", exporter="dynamo")
    np.testing.assert_allclose(backend(batch[:3]), expected[:3], atol=1e-4)


def test_auto_on_cpu_is_onnxruntime(module, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backend = create_backend(module)
    assert (backend.name, backend.device) == ("onnxruntime", "cpu")


def test_auto_falls_back_to_torch_without_onnxruntime(module, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    backend = create_backend(module, device="cpu")
    assert backend.name == "torch"
    with pytest.raises(RuntimeError, match="needs the onnxruntime package"):
        create_backend(module, backend="onnxruntime", device="cpu")


def test_cuda_without_cuda_is_a_clear_error(module, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for backend in ("auto", "torch", "onnxruntime"):
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            create_backend(module, backend=backend, device="cuda")


def test_invalid_options(module):
    with pytest.raises(ValueError, match="backend"):
        create_backend(module, backend="tensorrt", device="cpu")
    with pytest.raises(ValueError, match="device"):
        create_backend(module, device="tpu")
    with pytest.raises(ValueError, match="precision"):
        create_backend(module, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="needs CUDA"):
        create_backend(module, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="resolved device"):
        TorchBackend(module, "auto")


def test_bad_batches_are_rejected(onnx_backend):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        onnx_backend(np.zeros((2, 256, 128), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        onnx_backend(np.zeros((2, 1, 256, 128), dtype=np.float32))


def test_torch_backend_leaves_the_module_alone(module, batch, expected):
    TorchBackend(module, "cpu")
    assert not module.training and next(module.parameters()).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_precisions(module, batch, expected, precision):
    backend = create_backend(module, device="cuda", precision=precision)
    assert backend.name == "torch" and backend.device == "cuda"
    out = backend(batch)
    assert out.dtype == np.float32
    assert row_cosine(out, expected).min() >= (0.9999 if precision == "fp32" else 0.99)


def test_torch_backend_standardizes_pixels_as_the_cpu_does(module):
    """The path GPU workers take (uint8 in, standardised by torch on the device), run here on CPU:
    the same float32 values bit for bit, hence the same features."""
    from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, standardize_batch

    pixels = np.random.default_rng(3).integers(0, 256, size=(4, 256, 128, 3), dtype=np.uint8)
    backend = TorchBackend(module, "cpu")
    on_device = backend.standardize_pixels(pixels, IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_array_equal(on_device.numpy(), standardize_batch(pixels))
    np.testing.assert_array_equal(
        backend.features_from_pixels(pixels, IMAGENET_MEAN, IMAGENET_STD), backend(standardize_batch(pixels))
    )
    with pytest.raises(ValueError, match="uint8 pixels"):
        backend.standardize_pixels(pixels.astype(np.float32), IMAGENET_MEAN, IMAGENET_STD)
