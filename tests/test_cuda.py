"""On a CUDA GPU: fp32 equals torchreid, fp16/bf16 stay close to fp32, the device's normalisation
equals the CPU's bit for bit, and the pipeline runs there with every row accounted for.

Skipped, with the reason, where torch sees no CUDA device (this project's CI machine has none);
they ran on an H100/H200 lent to a development session, beside bench/gpu_benchmark.py, whose
figures are in bench/README.md.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import OsNetEncoder
from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, resize_batch, standardize_batch
from pipeline import run
from testkit.reference import CHECKPOINTS, cross_camera_retrieval, load_reference, read_labels, row_cosine
from tests.pipeline_helpers import COLUMNS, read_parquet_features, read_seed_rows, write_csv

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False here)"
)

FP32_MIN_COSINE = 0.99999
# The issue's bar for fp16; bf16 keeps 8 bits of mantissa to fp16's 11, so it gets a looser one.
REDUCED_MIN_COSINE = {"fp16": 0.999, "bf16": 0.995}
TRAINED = [stem for stem in CHECKPOINTS if not stem.endswith("_random")]
PUBLISHED_RANK1 = {"osnet_x0_25_msmt17": 0.606, "osnet_x0_25_market1501": 0.384}


@pytest.fixture(scope="module")
def references(reference_dir: Path, real_crops_dir: Path) -> dict:
    return {stem: load_reference(reference_dir, real_crops_dir, stem) for stem in CHECKPOINTS}


@pytest.fixture(scope="module")
def cuda_features(references, shared_weights_dir):
    cache: dict[tuple[str, str], np.ndarray] = {}

    def get(stem: str, precision: str) -> np.ndarray:
        if (stem, precision) not in cache:
            encoder = OsNetEncoder(shared_weights_dir / f"{stem}.pth", GPU=True, precision=precision)
            assert (encoder.device, encoder.backend.name) == ("cuda", "torch")
            cache[(stem, precision)] = encoder.encode_batch(references[stem][1])
        return cache[(stem, precision)]

    return get


@pytest.mark.parametrize("stem", list(CHECKPOINTS))
def test_fp32_on_cuda_matches_torchreid(stem, references, cuda_features):
    _, _, expected = references[stem]
    assert row_cosine(cuda_features(stem, "fp32"), expected).min() >= FP32_MIN_COSINE


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("stem", TRAINED)
def test_reduced_precision_stays_close_to_fp32(stem, precision, cuda_features):
    reduced = cuda_features(stem, precision)
    assert reduced.dtype == np.float32 and np.isfinite(reduced).all()
    assert row_cosine(reduced, cuda_features(stem, "fp32")).min() >= REDUCED_MIN_COSINE[precision]


def test_fp16_on_the_random_weight_x1_0_network_is_finite_and_close(cuda_features):
    """Untrained weights amplify rounding layer after layer (measured on an H200: fp16 0.9963,
    bf16 0.87 min cosine to fp32, where trained x0_25 weights keep 0.9999 and 0.998), so the
    bar above is for trained weights; the only x1.0 weights here are random. What this shows is
    that the x1.0 network with IBN runs in fp16 without overflow and stays near fp32."""
    reduced = cuda_features("osnet_ibn_x1_0_random", "fp16")
    assert np.isfinite(reduced).all()
    assert row_cosine(reduced, cuda_features("osnet_ibn_x1_0_random", "fp32")).min() >= 0.99


@pytest.mark.parametrize("stem", list(PUBLISHED_RANK1))
def test_fp16_keeps_the_retrieval_figures(stem, references, cuda_features, real_crops_dir):
    files, _, _ = references[stem]
    rank1, _ = cross_camera_retrieval(cuda_features(stem, "fp16"), files, read_labels(real_crops_dir))
    assert abs(rank1 - PUBLISHED_RANK1[stem]) <= 0.02


def test_device_normalisation_is_bit_identical_to_the_cpus(references, shared_weights_dir):
    _, crops, _ = references["osnet_x0_25_msmt17"]
    encoder = OsNetEncoder(shared_weights_dir / "osnet_x0_25_msmt17.pth", GPU=True)
    pixels = resize_batch(crops)
    on_device = encoder.backend.standardize_pixels(pixels, IMAGENET_MEAN, IMAGENET_STD)
    assert on_device.is_cuda and on_device.dtype == torch.float32
    np.testing.assert_array_equal(on_device.cpu().numpy(), standardize_batch(pixels))


def test_pipeline_on_cuda_in_fp16_gives_the_cpu_runs_rows(seed_table, shared_weights_dir, tmp_path):
    rows = [[r[c] for c in COLUMNS] for r in read_seed_rows(seed_table)[:40]]
    write_csv(tmp_path / "in.csv", rows + [[9001, -1, "99", "bad/empty.png", ""]])
    weights = str(shared_weights_dir / "osnet_x0_25_msmt17.pth")
    common = ["--input", str(tmp_path / "in.csv"), "--weights", weights]
    gpu = run([*common, "--output", str(tmp_path / "gpu"), "--device", "cuda", "--precision", "fp16"])
    cpu = run([*common, "--output", str(tmp_path / "cpu"), "--device", "cpu"])
    assert gpu == cpu and gpu["rows_encoded"] == 40 and gpu["errors_empty_cell"] == 1
    by_frame = {}
    for name in ("gpu", "cpu"):
        table = read_parquet_features(tmp_path / name).to_pydict()
        by_frame[name] = dict(zip(table["frame"], np.asarray(table["feature_vector"], np.float32)))
    assert by_frame["gpu"].keys() == by_frame["cpu"].keys()
    frames = sorted(by_frame["cpu"])
    gpu_features = np.stack([by_frame["gpu"][f] for f in frames])
    cpu_features = np.stack([by_frame["cpu"][f] for f in frames])
    assert row_cosine(gpu_features, cpu_features).min() >= REDUCED_MIN_COSINE["fp16"]
