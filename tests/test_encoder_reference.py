"""End to end against the reference: real crops -> OsNetEncoder -> features equal torchreid's.

../shared/data/reference holds torchreid 0.2.5's own features for every crop of
../shared/data/real_crops with each checkpoint of ../shared/weights, so these tests check the
architecture, the checkpoint loading, the preprocessing and both runtimes at once.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from model import OsNetEncoder, load_osnet, preprocess_batch
from testkit.reference import CHECKPOINTS, cross_camera_retrieval, load_reference, read_labels, row_cosine

MIN_COSINE = 0.99999
MAX_ABS = 1e-4

# Figures of ../shared/weights/SOURCES.md (torchreid's features, this crop set): rank-1, mAP.
PUBLISHED_RETRIEVAL = {"osnet_x0_25_msmt17": (0.606, 0.524), "osnet_x0_25_market1501": (0.384, 0.350)}


@pytest.fixture(scope="module")
def references(reference_dir: Path, real_crops_dir: Path) -> dict:
    return {stem: load_reference(reference_dir, real_crops_dir, stem) for stem in CHECKPOINTS}


@pytest.fixture(scope="module")
def encoders(shared_weights_dir: Path):
    """One encoder per (checkpoint, backend), built on first use and shared by the module's tests."""
    cache: dict[tuple[str, str], OsNetEncoder] = {}

    def get(stem: str, backend: str) -> OsNetEncoder:
        if (stem, backend) not in cache:
            cache[(stem, backend)] = OsNetEncoder(weight_filepath=shared_weights_dir / f"{stem}.pth", GPU=False, backend=backend)
        return cache[(stem, backend)]

    return get


@pytest.fixture(scope="module")
def features(references, encoders):
    cache: dict[tuple[str, str], np.ndarray] = {}

    def get(stem: str, backend: str) -> np.ndarray:
        if (stem, backend) not in cache:
            cache[(stem, backend)] = encoders(stem, backend).encode_batch(references[stem][1])
        return cache[(stem, backend)]

    return get


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("stem", list(CHECKPOINTS))
def test_features_match_reference(stem, backend, references, encoders, features):
    files, crops, expected = references[stem]
    encoder = encoders(stem, backend)
    assert encoder.backend.name == backend and encoder.arch == CHECKPOINTS[stem]
    actual = features(stem, backend)
    assert actual.shape == expected.shape == (len(files), 512) and actual.dtype == np.float32
    cosine = row_cosine(actual, expected)
    worst = int(np.argmin(cosine))
    assert cosine.min() >= MIN_COSINE, f"{files[worst]}: cosine {cosine[worst]}"
    max_abs = float(np.abs(actual - expected).max())
    if backend == "onnxruntime" and stem == "osnet_ibn_x1_0_random":
        # Random weights make this network's features large (up to ~11) and the fp32 rounding of
        # torch itself differs from exact arithmetic by ~1.2e-4 here (see the float64 test
        # below). ONNX Runtime's kernels round differently from torch's, so against torch's
        # output the two independent fp32 errors add up to ~2.1e-4: an absolute 1e-4 is below
        # the noise floor. The float64 test shows ONNX Runtime is as exact as torch.
        assert max_abs <= 3 * MAX_ABS, f"max abs diff {max_abs}"
    else:
        assert max_abs <= MAX_ABS, f"max abs diff {max_abs}"


def test_onnxruntime_as_exact_as_torch_in_float64_terms(references, encoders, shared_weights_dir):
    """On the IBN x1.0 network, ONNX Runtime's error against float64 is no larger than torch fp32's."""
    stem = "osnet_ibn_x1_0_random"
    crops = references[stem][1][:8]
    onnx_encoder = encoders(stem, "onnxruntime")
    batch = preprocess_batch(crops)
    model = load_osnet(shared_weights_dir / f"{stem}.pth")
    with torch.inference_mode():
        exact = copy.deepcopy(model).double()(torch.from_numpy(batch).double()).numpy()
        torch_fp32 = model(torch.from_numpy(batch)).numpy()
    onnx_fp32 = onnx_encoder.backend(batch)
    torch_error = np.abs(torch_fp32 - exact).max()
    onnx_error = np.abs(onnx_fp32 - exact).max()
    assert onnx_error <= 1.5 * torch_error, (onnx_error, torch_error)


@pytest.mark.parametrize("stem", list(PUBLISHED_RETRIEVAL))
def test_reference_features_give_published_retrieval(stem, references, real_crops_dir):
    """The metric code itself reproduces SOURCES.md's numbers from the reference features."""
    files, _, expected = references[stem]
    rank1, mean_ap = cross_camera_retrieval(expected, files, read_labels(real_crops_dir))
    assert (round(rank1, 3), round(mean_ap, 3)) == PUBLISHED_RETRIEVAL[stem]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("stem", list(PUBLISHED_RETRIEVAL))
def test_cross_camera_retrieval(stem, backend, references, features, real_crops_dir):
    files = references[stem][0]
    rank1, mean_ap = cross_camera_retrieval(features(stem, backend), files, read_labels(real_crops_dir))
    published_rank1, published_map = PUBLISHED_RETRIEVAL[stem]
    assert abs(rank1 - published_rank1) <= 1 / 99 + 5e-4, rank1  # within one of 99 queries
    assert abs(mean_ap - published_map) <= 0.005, mean_ap


def test_get_features_matches_encode_batch_and_keeps_none(references, encoders, features):
    stem = "osnet_x0_25_msmt17"
    crops, expected = references[stem][1], features(stem, "onnxruntime")
    encoder = encoders(stem, "onnxruntime")
    result = encoder.get_features([None, crops[0], None, crops[1], crops[2], None])
    assert [r is None for r in result] == [True, False, True, False, False, True]
    for got, want in zip([result[1], result[3], result[4]], expected[:3]):
        assert got.shape == (512,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert encoder.get_features([]) == []
    assert encoder.get_features([None]) == [None]


def test_encode_pixels_is_encode_batch_in_two_halves(references, encoders, features):
    """What the pipeline does: resize in the worker, then encode the pixels (maybe elsewhere)."""
    stem = "osnet_x0_25_msmt17"
    crops, expected = references[stem][1][:37], features(stem, "onnxruntime")[:37]
    encoder = encoders(stem, "onnxruntime")
    pixels = encoder.resize(crops)
    assert pixels.shape == (37, 256, 128, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(encoder.encode_pixels(pixels), expected)
    assert encoder.encode_pixels(encoder.resize([])).shape == (0, 512)
    for wrong in (pixels.astype(np.float32), pixels[:, :128], pixels[..., :1], list(pixels)):
        with pytest.raises(ValueError, match="expected uint8 pixels"):
            encoder.encode_pixels(wrong)


def test_batch_size_does_not_change_features(references, encoders, shared_weights_dir):
    stem = "osnet_x0_25_msmt17"
    crops = references[stem][1][:11]
    default = encoders(stem, "torch").encode_batch(crops)
    odd = OsNetEncoder(shared_weights_dir / f"{stem}.pth", GPU=False, backend="torch", batch_size=3).encode_batch(crops)
    np.testing.assert_allclose(odd, default, atol=2e-5)


def test_overlapped_preprocessing_gives_the_same_features_in_order(references, encoders, shared_weights_dir):
    """The GPU path's prefetching (forced on here, on the CPU) changes timing, never results."""
    stem = "osnet_x0_25_msmt17"
    crops = references[stem][1][:11]
    plain = OsNetEncoder(shared_weights_dir / f"{stem}.pth", GPU=False, backend="torch", batch_size=3)
    overlapped = OsNetEncoder(
        shared_weights_dir / f"{stem}.pth", GPU=False, backend="torch", batch_size=3, overlap_preprocessing=True
    )
    assert overlapped._prefetcher is not None and plain._prefetcher is None
    np.testing.assert_array_equal(overlapped.encode_batch(crops), plain.encode_batch(crops))


# ------------------------------------------------------------------------------------------
# The original tool's constructor and options
# ------------------------------------------------------------------------------------------
def test_original_keywords_are_accepted_and_used(references, features, shared_weights_dir):
    """A call written for the original tool works; its preprocessing keywords take effect."""
    stem = "osnet_x0_25_msmt17"
    crops = references[stem][1][:4]
    original = OsNetEncoder(
        input_width=1920, input_height=1080, weight_filepath=str(shared_weights_dir / f"{stem}.pth"),
        batch_size=2, num_classes=1041, patch_height=256, patch_width=128,
        norm_mean=[0.485, 0.456, 0.406], norm_std=[0.229, 0.224, 0.225], GPU=False, backend="torch",
    )
    assert original.batch_size == 2 and original.arch == "osnet_x0_25"
    np.testing.assert_allclose(original.encode_batch(crops), features(stem, "torch")[:4], atol=1e-5)

    other_size = OsNetEncoder(
        weight_filepath=shared_weights_dir / f"{stem}.pth", GPU=False, patch_height=128, patch_width=64,
        norm_mean=[0.5, 0.5, 0.5], norm_std=[0.5, 0.5, 0.5], backend="torch",
    )
    batch = preprocess_batch(crops, size=(64, 128), mean=[0.5] * 3, std=[0.5] * 3)
    assert batch.shape == (4, 3, 128, 64)
    np.testing.assert_allclose(other_size.encode_batch(crops), other_size.backend(batch), atol=1e-6)


def test_gpu_true_without_cuda_is_a_clear_error(shared_weights_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        OsNetEncoder(weight_filepath=shared_weights_dir / "osnet_x0_25_msmt17.pth", GPU=True)


def test_gpu_none_without_cuda_runs_on_cpu(shared_weights_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    encoder = OsNetEncoder(weight_filepath=shared_weights_dir / "osnet_x0_25_msmt17.pth", GPU=None)
    assert encoder.device == "cpu" and encoder.backend.name == "onnxruntime"


def test_fp16_on_cpu_is_refused(shared_weights_dir):
    with pytest.raises(ValueError, match="needs CUDA"):
        OsNetEncoder(weight_filepath=shared_weights_dir / "osnet_x0_25_msmt17.pth", GPU=False, precision="fp16")


def test_bf16_on_cpu_without_native_bf16_is_refused(shared_weights_dir, monkeypatch):
    import model.policy

    monkeypatch.setattr(model.policy, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="AVX512-BF16 or AMX"):
        OsNetEncoder(weight_filepath=shared_weights_dir / "osnet_x0_25_msmt17.pth", GPU=False, precision="bf16")


def test_normalize_gives_unit_vectors_in_the_same_direction(references, features, shared_weights_dir):
    stem = "osnet_x0_25_msmt17"
    crops = references[stem][1][:6]
    encoder = OsNetEncoder(weight_filepath=shared_weights_dir / f"{stem}.pth", GPU=False, normalize=True, backend="torch")
    unit = encoder.encode_batch(crops)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    assert row_cosine(unit, features(stem, "torch")[:6]).min() >= MIN_COSINE
    listed = encoder.get_features([crops[0], None])
    np.testing.assert_allclose(np.linalg.norm(listed[0]), 1.0, atol=1e-6)
    assert listed[1] is None


def test_bgr_channel_order(references, features, shared_weights_dir):
    stem = "osnet_x0_25_msmt17"
    crops = references[stem][1][:3]
    encoder = OsNetEncoder(weight_filepath=shared_weights_dir / f"{stem}.pth", GPU=False, channel_order="bgr", backend="torch")
    bgr = [np.ascontiguousarray(c[:, :, ::-1]) for c in crops]
    np.testing.assert_allclose(encoder.encode_batch(bgr), features(stem, "torch")[:3], atol=1e-5)


def test_weights_as_bytes_and_file_object(references, features, shared_weights_dir):
    stem = "osnet_x0_25_msmt17"
    crops = references[stem][1][:3]
    path = shared_weights_dir / f"{stem}.pth"
    from_bytes = OsNetEncoder(weight_filepath=path.read_bytes(), GPU=False, backend="torch")
    with open(path, "rb") as handle:
        from_file = OsNetEncoder(weight_filepath=handle, GPU=False, backend="torch")
    for encoder in (from_bytes, from_file):
        np.testing.assert_allclose(encoder.encode_batch(crops), features(stem, "torch")[:3], atol=1e-5)


def test_bad_crops_are_value_errors(encoders):
    encoder = encoders("osnet_x0_25_msmt17", "onnxruntime")
    with pytest.raises(ValueError, match="uint8"):
        encoder.get_features([np.zeros((10, 10, 3), dtype=np.float32)])
    with pytest.raises(ValueError):
        encoder.encode_batch([None])
