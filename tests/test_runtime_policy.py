"""One runtime policy for launcher and worker: for every kind of device (mocked GPUs, no GPU needed)
the launcher's plan is the worker's, Beam's batches are the engine's chunk, and a worker whose
card holds less than planned lowers the batch with one warning that says what to pass."""
from __future__ import annotations

import logging
import sys

import pytest
import torch

from model import policy
from model.policy import ACCELERATOR_MEMORY, RuntimePlan, cuda_batch_size, local_gpu, plan_here, plan_runtime, settle
from pipeline.build import plan_workers_runtime, worker_accelerator
from pipeline.options import OsNetOptions
from pipeline.validate import OptionError
from transforms.inference import OsNetModelHandler
from weights import BUNDLED_WEIGHTS

GB = 10**9
# torch reports a little less than a card is sold with (ECC, the driver's reservation)
REPORTED = (1.0, 0.93)


def mock_gpu(monkeypatch, total_memory: int | None) -> None:
    """This machine seen by torch: no CUDA (None), or one card of ``total_memory`` bytes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: total_memory is not None)

    class Properties:
        pass

    properties = Properties()
    properties.total_memory = total_memory
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)


@pytest.mark.parametrize("gib, size", [(16, 64), (24, 128), (40, 256), (80, 512), (141, 512), (4, 16)])
def test_cuda_batch_size_fits_sixteen_processes_in_the_gpus_memory(gib, size):
    """T4 16 GB, L4 24 GB, A100 40 GB, H100 80 GB, H200 141 GB: 16 processes' fp32 batches stay
    within the card; never under 16; a card of unknown memory gets the full size."""
    assert cuda_batch_size(gib * GB) == size
    assert cuda_batch_size(None) == 512


def test_dataflow_accelerators_by_name():
    assert cuda_batch_size("nvidia-tesla-t4") == 64  # deploy/dataflow/submit.sh's default
    assert cuda_batch_size("nvidia-l4") == 128
    assert cuda_batch_size("nvidia-tesla-a100") == 256
    assert cuda_batch_size("nvidia-h100-80gb") == cuda_batch_size("nvidia-h200-141gb") == 512
    assert cuda_batch_size("NVIDIA-TESLA-T4") == 64


@pytest.mark.parametrize("fraction", REPORTED)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("device", ["auto", "cuda"])
@pytest.mark.parametrize("accelerator", sorted(ACCELERATOR_MEMORY))
def test_launcher_and_worker_agree_on_every_gpu(monkeypatch, caplog, accelerator, device, precision, fraction):
    launcher = plan_runtime("auto", device, precision, gpu=accelerator, cpu_is_here=False)
    assert launcher.device == "cuda" and launcher.backend == "torch"
    mock_gpu(monkeypatch, int(ACCELERATOR_MEMORY[accelerator] * fraction))
    worker = plan_here("auto", device, precision)
    assert worker == launcher
    handler = OsNetModelHandler(BUNDLED_WEIGHTS, device=device, precision=precision, plan=launcher)
    with caplog.at_level(logging.WARNING):
        assert handler.worker_plan() == launcher
    assert not caplog.records
    assert handler.batch_elements_kwargs() == {"min_batch_size": launcher.batch_size, "max_batch_size": launcher.batch_size}


@pytest.mark.parametrize("backend", ["auto", "torch", "onnxruntime"])
def test_launcher_and_worker_agree_on_cpu_and_beams_batches_are_the_engines(monkeypatch, backend):
    from transforms import inference

    monkeypatch.setattr(inference, "_ENGINES", {})
    mock_gpu(monkeypatch, None)
    launcher = plan_runtime(backend, "auto", "fp32", cpu_is_here=False)
    assert launcher == plan_here(backend, "auto", "fp32") == plan_here(backend, "cpu", "fp32")
    handler = OsNetModelHandler(BUNDLED_WEIGHTS, backend=backend, plan=launcher)
    engine = handler.load_model()
    assert engine.plan == launcher
    assert handler.batch_elements_kwargs() == {"min_batch_size": engine.batch_size, "max_batch_size": engine.batch_size}


def test_cpu_batch_sizes_per_backend(monkeypatch):
    assert plan_runtime("torch", "cpu").batch_size == 8
    assert plan_runtime("onnxruntime", "cpu").batch_size == 32
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed: torch
    assert plan_runtime("auto", "cpu") == RuntimePlan("torch", "cpu", "fp32", 8)


def test_a_smaller_card_than_planned_lowers_the_batch_with_one_warning(monkeypatch, caplog):
    """--device cuda without an accelerator the launcher knows: planned for the largest batch; a
    T4 worker runs 64 (never out of memory), and says so once."""
    launcher = plan_runtime("auto", "cuda", "fp32", cpu_is_here=False)
    assert launcher.batch_size == 512
    mock_gpu(monkeypatch, int(ACCELERATOR_MEMORY["nvidia-tesla-t4"] * 0.93))
    handler = OsNetModelHandler(BUNDLED_WEIGHTS, device="cuda", plan=launcher)
    with caplog.at_level(logging.WARNING):
        settled = handler.worker_plan()
    assert settled == RuntimePlan("torch", "cuda", "fp32", 64)
    (record,) = caplog.records
    assert "--batch_size 64" in record.getMessage() and "batch 64" in record.getMessage()


def test_a_larger_card_than_planned_keeps_beams_batch_size():
    planned = plan_runtime("auto", "auto", "fp16", gpu="nvidia-tesla-t4", cpu_is_here=False)
    here = plan_runtime("auto", "auto", "fp16", gpu=80 * GB)
    settled, warning = settle(planned, here)
    assert settled.batch_size == planned.batch_size == 64
    assert "--batch_size 512" in warning


def test_a_worker_on_another_device_than_planned_says_so():
    planned = plan_runtime("auto", "auto", "fp32", cpu_is_here=False)  # no GPU known: CPU
    here = plan_runtime("auto", "auto", "fp32", gpu=24 * GB)
    settled, warning = settle(planned, here)
    assert (settled.device, settled.backend, settled.batch_size) == ("cuda", "torch", planned.batch_size)
    assert "--device cuda" in warning and "--backend torch" in warning


def test_an_explicit_batch_size_wins_everywhere(monkeypatch):
    launcher = plan_runtime("auto", "cuda", "fp32", batch_size=300, gpu="nvidia-tesla-t4", cpu_is_here=False)
    assert launcher.batch_size == 300
    mock_gpu(monkeypatch, ACCELERATOR_MEMORY["nvidia-tesla-t4"])
    assert settle(launcher, plan_here("auto", "cuda", "fp32", 300)) == (launcher, None)
    handler = OsNetModelHandler(BUNDLED_WEIGHTS, device="cuda", batch_size=300, plan=launcher)
    assert handler.batch_elements_kwargs()["max_batch_size"] == 300
    assert plan_runtime("torch", "cpu", batch_size=3).batch_size == 3


def test_invalid_options_are_value_errors():
    with pytest.raises(ValueError, match="backend"):
        plan_runtime("tensorrt", "cpu")
    with pytest.raises(ValueError, match="device"):
        plan_runtime(device="tpu")
    with pytest.raises(ValueError, match="batch_size"):
        plan_runtime(device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="fp32 only"):
        plan_runtime("onnxruntime", "cuda", "fp16")
    with pytest.raises(ValueError, match="CPU only"):
        plan_runtime("openvino", "cuda", "bf16")
    with pytest.raises(ValueError, match="on CUDA only"):
        plan_runtime("torch", "cpu", "bf16", cpu_is_here=False)


def test_local_gpu(monkeypatch):
    mock_gpu(monkeypatch, None)
    assert local_gpu("cpu") is None and local_gpu("auto") is None
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        local_gpu("cuda")
    mock_gpu(monkeypatch, 24 * GB)
    assert local_gpu("auto") == local_gpu("cuda:0") == 24 * GB
    assert local_gpu("cpu") is None


DATAFLOW_T4 = "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"


def test_the_launcher_reads_dataflows_accelerator(monkeypatch):
    """submit.sh's default, a T4 per worker: Beam's batches are what a T4 holds, whatever GPU the
    launcher has (none here, an H200 below)."""
    options = OsNetOptions(["--runner=DataflowRunner", "--device=cuda", DATAFLOW_T4, "--dataflow_service_options=enable_prime"])
    assert worker_accelerator(options) == "nvidia-tesla-t4"
    mock_gpu(monkeypatch, 141 * GB)
    assert plan_workers_runtime(options) == RuntimePlan("torch", "cuda", "fp32", 64)
    auto = OsNetOptions(["--runner=DataflowRunner", DATAFLOW_T4])
    assert plan_workers_runtime(auto).device == "cuda"
    assert worker_accelerator(OsNetOptions(["--runner=DataflowRunner"])) is None


def test_the_launcher_plans_for_its_own_gpu_when_the_job_runs_here(monkeypatch):
    mock_gpu(monkeypatch, 24 * GB)
    assert plan_workers_runtime(OsNetOptions([])) == RuntimePlan("torch", "cuda", "fp32", 128)
    mock_gpu(monkeypatch, None)
    assert plan_workers_runtime(OsNetOptions(["--device=cpu", "--backend=torch"])).batch_size == 8
    with pytest.raises(OptionError, match="fp32 only"):
        plan_workers_runtime(OsNetOptions(["--device=cuda", "--backend=onnxruntime", "--precision=fp16",
                                           "--runner=DataflowRunner"]))


def test_bf16_on_a_remote_cpu_is_left_to_the_workers(monkeypatch):
    monkeypatch.setattr(policy, "cpu_supports_bf16", lambda: False)
    options = OsNetOptions(["--runner=DataflowRunner", "--device=cpu", "--precision=bf16"])
    assert plan_workers_runtime(options) == RuntimePlan("openvino", "cpu", "bf16", 32)
