"""The one decision of how the network runs: backend, device, precision and batch size.

:func:`plan_runtime` makes it from the options as given and a description of the GPU the model
will run on (its memory, or a Dataflow accelerator name), with no model and no GPU needed: the
launcher calls it to size Beam's batches, each worker calls it again with the card torch sees
(:func:`plan_here`), and :func:`settle` reconciles the two. Which precision may run on which
device, and which runtime runs which precision, is decided here and nowhere else.

No Beam and no model here; torch is imported only to look at this machine's GPU, and not even
for that on a Linux machine without an NVIDIA device (:func:`_no_gpu_device`).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Optional, Union

__all__ = [
    "ACCELERATOR_MEMORY",
    "BACKENDS",
    "PRECISIONS",
    "RuntimePlan",
    "check_runtime",
    "cpu_supports_bf16",
    "cuda_batch_size",
    "local_gpu",
    "plan_here",
    "plan_runtime",
    "settle",
]

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16")

# Batch sizes chosen by measurement (bench/README.md: "Latest figures", "Findings", "GPU"). On CPU, eager
# torch is fastest at small batches, while the thread-pooled runtimes are flat from 8 up and a
# larger batch leaves their threads idle less often. On a GPU large batches amortise kernel
# launches and, with several SDK processes per GPU, the switches between their contexts.
_CPU_BATCH = {"torch": 8, "onnxruntime": 32, "openvino": 32}
_CUDA_BATCH = 512
_MIN_CUDA_BATCH = 16
# GPU memory one crop of a batch takes in fp32, activations included (measured peak at batch 512,
# bench/README.md "GPU"), and the SDK processes that may share one GPU, each with its own batch.
_CUDA_BYTES_PER_CROP = 8 * 2**20
_CUDA_PROCESSES_PER_GPU = 16

_GB = 10**9
#: Memory of the GPUs Dataflow attaches (``worker_accelerator=type:NAME``), as sold. The batch
#: sizes they give sit far from the power-of-two boundaries of :func:`cuda_batch_size`, so the
#: slightly smaller figure torch reports on the worker gives the same size.
ACCELERATOR_MEMORY: dict[str, int] = {
    "nvidia-tesla-p4": 8 * _GB,
    "nvidia-tesla-t4": 16 * _GB,
    "nvidia-tesla-p100": 16 * _GB,
    "nvidia-tesla-v100": 16 * _GB,
    "nvidia-l4": 24 * _GB,
    "nvidia-tesla-a100": 40 * _GB,
    "nvidia-a100-80gb": 80 * _GB,
    "nvidia-h100-80gb": 80 * _GB,
    "nvidia-h100-mega-80gb": 80 * _GB,
    "nvidia-h200-141gb": 141 * _GB,
}

#: A GPU as the planner takes it: total memory in bytes, or an accelerator name of
#: :data:`ACCELERATOR_MEMORY`; None where no GPU is known.
Gpu = Union[int, str, None]


@dataclass(frozen=True)
class RuntimePlan:
    """How the network runs: every ``auto`` resolved."""

    backend: str
    """"torch", "onnxruntime" or "openvino"."""
    device: str
    """"cpu" or "cuda[:N]"."""
    precision: str
    batch_size: int
    """Crops per network call, and the size of the pipeline's batches."""

    @property
    def on_cuda(self) -> bool:
        return _is_cuda(self.device)

    def describe(self) -> str:
        return f"{self.backend} on {self.device}, {self.precision}, batch {self.batch_size}"


def _is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def _memory_of(gpu: Gpu) -> Optional[int]:
    if isinstance(gpu, str):
        return ACCELERATOR_MEMORY.get(gpu.lower())
    return gpu


def cuda_batch_size(gpu: Gpu = None) -> int:
    """The batch size for a GPU: :data:`_CUDA_BATCH`, or less where the batches of every SDK
    process that may share the card would not fit its memory (a power of two, at least
    :data:`_MIN_CUDA_BATCH`). A card of unknown memory gets the full size: the worker, which
    knows the card, lowers it (:func:`settle`)."""
    memory = _memory_of(gpu)
    size = _CUDA_BATCH
    if memory is None:
        return size
    fits = memory // (_CUDA_PROCESSES_PER_GPU * _CUDA_BYTES_PER_CROP)
    while size > _MIN_CUDA_BATCH and size > fits:
        size //= 2
    return size


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is unreadable)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


#: CPU features with native bf16 arithmetic: AVX512-BF16 (dot products) or AMX (tile matmuls).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this machine's cores compute in bf16 natively (AVX512-BF16 or AMX-BF16).

    Without them OpenVINO would emulate bf16 in fp32: slower than fp32, and less exact.
    Read from /proc/cpuinfo; elsewhere OpenVINO is asked, when it is installed.
    """
    flags = _cpu_flags()
    if flags:
        return any(flag in flags for flag in _BF16_CPU_FLAGS)
    try:
        import openvino

        return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu") and not _is_cuda(device):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}")


def _check_precision(device: str, precision: str, cpu_is_here: bool) -> None:
    """Which precision runs on which device.

    - ``fp32``: everywhere.
    - ``fp16``: CUDA only (torch).
    - ``bf16``: CUDA (torch), or CPU cores with native bf16 (AVX512-BF16 or AMX), through
      OpenVINO. Opt-in only: ``auto`` never picks it, since its features are not fp32's
      (bench/README.md, "CPU speed switches").
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    if _is_cuda(device) or precision == "fp32":
        return
    if precision == "fp16":
        raise ValueError("precision='fp16' needs CUDA; on CPU use fp32, or bf16 on cores with AVX512-BF16/AMX")
    if cpu_is_here and not cpu_supports_bf16():
        raise ValueError(
            "precision='bf16' on CPU needs cores with native bf16 (AVX512-BF16 or AMX; e.g. Intel Xeon "
            "Cooper Lake / Sapphire Rapids or later, AMD Zen 4 or later); this CPU has neither: use fp32"
        )


def check_runtime(backend: str, device: str, precision: str, cpu_is_here: bool = True) -> None:
    """Refuse (ValueError) a resolved backend/device/precision combination that cannot run.

    ``cpu_is_here``: the CPU that will run the model is this machine's, so its bf16 support can
    be checked; a launcher for workers elsewhere passes False and checks only what is wrong
    everywhere.
    """
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    _check_device(device)
    if device == "auto":
        raise ValueError("a runtime needs a resolved device ('cpu' or 'cuda[:N]'), not 'auto': see plan_runtime")
    _check_precision(device, precision, cpu_is_here)
    on_cuda = _is_cuda(device)
    if backend == "onnxruntime" and precision != "fp32":
        raise ValueError(f"the onnxruntime backend runs fp32 only; use backend='auto' for {precision}")
    if backend == "openvino":
        if on_cuda:
            raise ValueError("the openvino backend runs on CPU only")
        if precision != "bf16":
            raise ValueError(f"the openvino backend runs bf16 only (fp32 is ONNX Runtime's), not {precision!r}")
    if backend == "torch" and precision != "fp32" and not on_cuda:
        raise ValueError(
            f"the torch backend runs {precision} on CUDA only (on CPU it is no faster than fp32); "
            f"use backend='auto' (OpenVINO) for bf16 on CPU"
        )


def _onnxruntime_installed() -> bool:
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str, device: str, precision: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend != "auto":
        return backend
    if _is_cuda(device):
        return "torch"  # cuDNN eager is fast, and runs fp16/bf16
    if precision == "bf16":
        return "openvino"  # the only CPU runtime here that computes in bf16, and it is faster
    # ONNX Runtime is the faster CPU runtime (bench/README.md, "model only"); torch where it is absent
    return "onnxruntime" if _onnxruntime_installed() else "torch"


def plan_runtime(
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    batch_size: Optional[int] = None,
    gpu: Gpu = None,
    *,
    cpu_is_here: bool = True,
) -> RuntimePlan:
    """The runtime for these options on a machine with ``gpu``.

    Args:
        backend: "torch", "onnxruntime", "openvino", or "auto": torch on CUDA, ONNX Runtime on CPU
            in fp32 (torch where onnxruntime is not installed), OpenVINO on CPU in bf16.
        device: "auto" (CUDA when ``gpu`` is given), "cpu" or "cuda[:N]".
        precision: "fp32"; "fp16" (CUDA); "bf16" (CUDA, or CPU cores with AVX512-BF16/AMX).
            Never lowered without being asked.
        batch_size: an explicit size, used as it is; None picks the measured best for the
            backend, on CUDA what the card's memory allows (:func:`cuda_batch_size`).
        gpu: the GPU the model runs on: total memory in bytes or a Dataflow accelerator name;
            None where there is none, or it is not known (explicit ``device="cuda"``).
        cpu_is_here: see :func:`check_runtime`.
    Raises:
        ValueError: an unknown option, or a combination that cannot run.
    """
    _check_device(device)
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, not {batch_size!r}")
    if device == "auto":
        device = "cuda" if gpu is not None else "cpu"
    name = _resolve_backend(backend, device, precision)
    check_runtime(name, device, precision, cpu_is_here)
    if batch_size is None:
        batch_size = cuda_batch_size(gpu) if _is_cuda(device) else _CPU_BATCH[name]
    return RuntimePlan(name, device, precision, batch_size)


def _no_gpu_device() -> bool:
    """True on a Linux machine (or container) with no NVIDIA device file (nor WSL's GPU device),
    where CUDA cannot work: an SDK worker that only runs ONNX Runtime on CPU then need not import
    torch (about 180 MB of memory and 2-3 s) to learn that. False wherever it cannot tell."""
    if not sys.platform.startswith("linux"):
        return False
    return not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/dxg")


def local_gpu(device: str = "auto") -> Optional[int]:
    """Total memory of the GPU torch would run ``device`` on; None for "cpu", and for "auto"
    where torch sees no CUDA (or, where torch is not loaded yet, the machine has no GPU device).

    Raises:
        RuntimeError: ``device`` names CUDA and torch has none.
    """
    _check_device(device)
    if device == "cpu":
        return None
    if device == "auto" and "torch" not in sys.modules and _no_gpu_device():
        return None
    import torch

    if not torch.cuda.is_available():
        if device == "auto":
            return None
        raise RuntimeError(
            f"device={device!r} was requested but CUDA is not available to torch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
            f"use device='cpu' or 'auto'"
        )
    index = int(device.partition(":")[2] or 0)
    return int(torch.cuda.get_device_properties(index).total_memory)


def plan_here(
    backend: str = "auto", device: str = "auto", precision: str = "fp32", batch_size: Optional[int] = None
) -> RuntimePlan:
    """:func:`plan_runtime` for this machine: its GPU as torch sees it, its CPU's bf16 support."""
    return plan_runtime(backend, device, precision, batch_size, local_gpu(device), cpu_is_here=True)


def settle(planned: RuntimePlan, here: RuntimePlan) -> tuple[RuntimePlan, Optional[str]]:
    """The plan a worker runs: its own (``here``), with the launcher's batch size (``planned``,
    the size of the batches Beam hands it) unless its card allows less. Returns it and, where
    the two plans disagree, a warning that says what to pass; None where they agree.

    Never more than planned (a bigger network call would not be filled), never more than the
    card holds (it would run out of memory).
    """
    if planned == here:
        return here, None
    batch = min(planned.batch_size, here.batch_size)
    settled = dataclasses.replace(here, batch_size=batch)
    flags = []
    if planned.device != here.device:
        flags.append(f"--device {here.device.partition(':')[0]}")
    if planned.backend != here.backend:
        flags.append(f"--backend {here.backend}")
    if here.batch_size != planned.batch_size:
        flags.append(f"--batch_size {here.batch_size}")
    message = (
        f"the job was planned for {planned.describe()} but this worker runs {here.describe()}; "
        f"it uses batch {batch}: pass {' '.join(flags) or 'the same options'} when launching to plan for this worker"
    )
    return settled, message
