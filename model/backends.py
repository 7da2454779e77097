"""Runtimes that turn a preprocessed batch into features: torch eager, ONNX Runtime (fp32), or
OpenVINO (CPU bf16, opt-in).

All take the *same* loaded :class:`~model.osnet.OSNet`; the ONNX model is exported from it in
memory when the backend is created, so there is no second weights file to keep in sync, and the
export is checked against torch on a probe batch before it is used.

On CPU every backend runs the network on threads of its own with denormals flushed to zero
(:func:`_flush_denormals_in_this_thread`); the threads that call a backend keep their mode.
Which precision may run on which device is decided in one place: :func:`check_precision`.

Measured on this project's 2-core CPU machine (osnet_ibn_x1_0, fp32, batch 8): torch eager about
45 img/s, ONNX Runtime about 107 img/s (both slower at larger batches), so ``backend="auto"``
picks ONNX Runtime on CPU and torch on CUDA.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import os
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from model.osnet import FEATURE_DIM
from model.preprocess import check_pixels

__all__ = [
    "BACKENDS",
    "FeatureBackend",
    "OnnxRuntimeBackend",
    "OpenVinoBackend",
    "TorchBackend",
    "check_precision",
    "cpu_supports_bf16",
    "create_backend",
    "cuda_batch_size",
    "default_batch_size",
    "planned_batch_size",
    "planned_runtime",
    "resolve_device",
]

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Chosen by measurement on the 2-core CPU machine (osnet_ibn_x1_0): torch eager peaks at batch
# 4-8 (32/45/45-47/31-38/28 img/s at 1/4/8/16/32). ONNX Runtime, as OnnxRuntimeBackend runs it
# (single crops on one thread per core), is flat from 8 to 64 (141-144 img/s), and a batch of 32
# leaves its threads idle at most once per 32 crops: +7% end to end over 8 (bench/README.md, R4).
# On a GPU large batches amortise kernel launches and, with several SDK processes per GPU, the
# switches between their contexts: on an H200 (fp16), model only 6,000-8,400 / 8,300-9,200 /
# 10,200-10,900 img/s at batch 128 / 256 / 512, and the pipeline with 16 processes 5,200-6,700
# rows/s at 128 against 8,300 at 512 (bench/README.md, "GPU").
_CPU_BATCH = {"torch": 8, "onnxruntime": 32, "openvino": 32}
_CUDA_BATCH = 512
# GPU memory a batch may take: the H200 run peaked at 4.1 GB allocated for 512 crops in fp32
# (8 MB a crop, activations included); each of up to 16 SDK processes on a GPU gets 1/16 of it.
_CUDA_BYTES_PER_CROP = 8 * 2**20
_CUDA_PROCESSES_PER_GPU = 16

_INPUT_NAME = "images"
_OUTPUT_NAME = "features"
_PROBE_SHAPE = (2, 3, 256, 128)
# Batch, height and width are left free in the graph (measured: no cost against a fixed size),
# so one session serves any patch size the encoder is configured with.
_DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
_PROBE_MIN_COSINE = 0.9999
# bf16 keeps 8 bits of mantissa: on a random probe through a random-weight x1.0 network its
# features are ~0.92 cosine from fp32; an export gone wrong gives ~0. Real crops on trained
# weights are the fidelity figures that matter (bench/README.md, "CPU bf16").
_BF16_PROBE_MIN_COSINE = 0.8


@runtime_checkable
class FeatureBackend(Protocol):
    """Runs the network: float32 (N, 3, H, W) ndarray -> float32 (N, 512) ndarray."""

    name: str
    """"torch" or "onnxruntime"."""
    device: str
    """"cpu" or "cuda"."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when torch sees a GPU else "cpu"; "cuda" without one is a RuntimeError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} was requested but CUDA is not available to torch "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                f"use device='cpu' or 'auto'"
            )
        return device
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}")


def _default_threads() -> int:
    """Cores this process may use (cgroup/affinity aware where the OS tells us)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_flushes_denormals() -> bool:
    """Whether the calling thread's CPU treats denormal float32 inputs as zero (x86 MXCSR DAZ,
    which ``torch.set_flush_denormal`` sets together with FTZ)."""
    return float(np.float32(1e-39) * np.float32(1.0)) == 0.0


def _flush_denormals_in_this_thread(torch_threads: int | None = None) -> None:
    """Worker-thread initializer: flush-to-zero / denormals-are-zero for this thread only (and the
    threads it creates later, which inherit it), and torch's intra-op thread count, which is
    per thread in OpenMP.

    Model-zoo checkpoints hold denormal weights (the bundled MSMT17 x0_25 file: 741 in 71
    tensors), their activations go denormal too, and x86 cores take a slow path for every
    operation on a denormal: measured 4.5x slower here (bench/README.md). Flushing them to zero
    changes no feature beyond cos 1 - 1e-5 (tests/test_encoder_reference.py): they are below
    1.2e-38, far under any activation that matters.
    """
    torch.set_flush_denormal(True)
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)


def _set_torch_threads(torch_threads: int | None = None) -> None:
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)


def _network_pool(workers: int, prefix: str, flush: bool = True, torch_threads: int | None = None) -> ThreadPoolExecutor:
    """Threads that run the network, with denormals flushed in them (unless ``flush`` is False,
    for comparisons): the caller's own threads keep their floating-point mode, so the user's code
    in the same process is not affected."""
    initializer = _flush_denormals_in_this_thread if flush else _set_torch_threads
    return ThreadPoolExecutor(workers, prefix, initializer=initializer, initargs=(torch_threads,))


def _map_crops(pool: ThreadPoolExecutor, run: Callable[[Any], np.ndarray], items: Sequence[Any]) -> np.ndarray:
    """``run`` over ``items`` on ``pool``, the (1, 512) results stacked in order."""
    if len(items) == 0:
        return np.empty((0, FEATURE_DIM), np.float32)
    return np.concatenate(list(pool.map(run, items)))


def _check_batch(batch: np.ndarray) -> np.ndarray:
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1] != 3:
        shape = getattr(batch, "shape", None)
        raise ValueError(f"expected a float32 (N, 3, H, W) array, got {type(batch).__name__} of shape {shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def _use_ieee_fp32_on_cuda() -> None:
    """fp32 means fp32: turn off TF32 in cuDNN convolutions and cuBLAS matmuls.

    PyTorch lets cuDNN run fp32 convolutions in TF32 (10-bit mantissa) on Ampere and later by
    default, which moves OSNet's features by ~1e-3 relative: past the 0.99999 cosine this
    project promises for fp32. Process-wide, like every such switch in torch; fp16/bf16 runs
    are not affected (they do not use fp32 math in the convolutions).
    """
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):  # torch >= 2.9
        cudnn_conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


class TorchBackend:
    """Eager PyTorch under ``inference_mode``.

    On CUDA the input is copied from pinned memory without blocking, and fp16/bf16 run the
    network in that dtype with channels_last tensors (the layout tensor cores want); the output is
    returned as float32. fp32 on CUDA is IEEE fp32 (TF32 off). Reduced precision on CPU is
    refused: it is slower there, not faster.

    Besides float32 batches, :meth:`features_from_pixels` takes resized uint8 pixels and
    normalises them on the device: a quarter of the bytes to copy, and no normalisation work
    for the CPU, which feeds a GPU at its limit.
    """

    name = "torch"

    def __init__(
        self, module: nn.Module, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
        *, flush_denormals: bool = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
        self.device = resolve_device(device)
        on_cuda = self.device.startswith("cuda")
        if precision != "fp32" and not on_cuda:
            raise ValueError(f"the torch backend runs precision={precision!r} on CUDA only; on CPU: fp32, or bf16 with backend='auto' (OpenVINO)")
        if threads is not None:  # process-wide in torch: the last backend created wins
            torch.set_num_threads(threads)
        if on_cuda and precision == "fp32":
            _use_ieee_fp32_on_cuda()
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self._memory_format = torch.channels_last if precision != "fp32" else torch.contiguous_format
        if on_cuda or precision != "fp32":
            # Leave the caller's module untouched (it may also feed another backend).
            module = copy.deepcopy(module)
        self.module = module.eval().to(device=self.device, dtype=self.dtype, memory_format=self._memory_format)
        self._pin = on_cuda
        self._normalization: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # On CPU the network runs on one worker thread with denormals flushed; the OpenMP threads
        # torch starts from it inherit the mode. The calling thread's mode is left alone.
        self.flush_denormals = bool(flush_denormals) and not on_cuda
        self._cpu_runner = None if on_cuda else _network_pool(1, "osnet-torch", self.flush_denormals, torch.get_num_threads())

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self._pin:
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _forward(self, tensor: torch.Tensor) -> np.ndarray:
        tensor = tensor.to(dtype=self.dtype, memory_format=self._memory_format)
        with torch.inference_mode():
            features = self.module(tensor)
        return features.float().cpu().numpy()

    def _run(self, tensor: torch.Tensor) -> np.ndarray:
        if self._cpu_runner is None:
            return self._forward(tensor)
        return self._cpu_runner.submit(self._forward, tensor).result()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self._to_device(_check_batch(batch)))

    def normalize_pixels(self, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) on the device, equal bit for bit to
        :func:`model.preprocess.normalize_batch` (the same three correctly rounded float32
        operations; divisors are device tensors, since torch turns division by a Python scalar
        into multiplication by its reciprocal, which rounds differently). The result is an
        NCHW view of NHWC memory: channels_last, as reduced precision wants it.
        """
        check_pixels(pixels)
        key = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        constants = self._normalization.get(key)
        if constants is None:
            as_column = lambda values: torch.tensor(values, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            constants = (as_column([255.0] * 3), as_column(key[0]), as_column(key[1]))
            self._normalization[key] = constants
        full_scale, mean_t, std_t = constants
        with torch.inference_mode():
            tensor = self._to_device(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
            return tensor.to(torch.float32).div_(full_scale).sub_(mean_t).div_(std_t)

    def features_from_pixels(self, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        """Features of resized uint8 (N, H, W, 3) pixels, normalised on the device."""
        return self._run(self.normalize_pixels(pixels, mean, std))


def _check_export(
    backend: Callable[[np.ndarray], np.ndarray], module: nn.Module, min_cosine: float = _PROBE_MIN_COSINE,
    what: str = "the ONNX export",
) -> None:
    """Refuse an exported model that does not compute what the torch module computes."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(_PROBE_SHAPE, generator=generator)
    reference_module = copy.deepcopy(module).float().cpu().eval()
    with torch.inference_mode():
        expected = reference_module(probe).numpy()
    actual = backend(probe.numpy())
    cosine = np.sum(expected * actual, axis=1) / (
        np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1) + 1e-12
    )
    if actual.shape != expected.shape or not np.all(cosine >= min_cosine):
        raise RuntimeError(f"{what} does not match the torch module (cosine {cosine.tolist()}); use backend='torch'")


def _export_onnx(module: nn.Module) -> bytes:
    """Serialise the eval-mode module to ONNX in memory, batch and image size dynamic.

    The TorchScript exporter is used while torch still ships it: it takes under a second where
    the torch.export-based one (``dynamo=True``, the default since torch 2.9) takes ~10 s for the
    same, numerically identical graph. It warns that InstanceNorm is exported with instance
    statistics ("train=True"); that is what InstanceNorm2d(track_running_stats=False) computes in
    eval mode too, so the warning is silenced. The probe check in OnnxRuntimeBackend guards both.
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
        return _export_onnx_dynamo(module)


def _export_onnx_dynamo(module: nn.Module) -> bytes:
    """The torch.export-based exporter (needs onnxscript)."""
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


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError("backend='onnxruntime' needs the onnxruntime package (pip install onnxruntime)") from exc
    return onnxruntime


class OnnxRuntimeBackend:
    """ONNX Runtime session on a graph exported from the module at construction (fp32 only).

    On CPU the session runs single-threaded, and a batch is split into single crops run
    concurrently on ``threads`` Python threads (default: every core this process may use;
    ``InferenceSession.run`` releases the GIL). OSNet's operators are small (depthwise and 1x1
    convolutions on maps of at most 64x32), so splitting one image over an intra-op pool pays a
    synchronisation per operator, while independent images keep every core busy without one:
    measured 118 -> 148 img/s (osnet_ibn_x1_0, batch 8, 2 cores), identical features. On CUDA the
    whole batch is one run. Several processes on one machine should split the cores between them
    via ``threads``.
    """

    name = "onnxruntime"

    def __init__(
        self, module: nn.Module, device: str = "cpu", threads: int | None = None, *, exporter: str = "auto",
        flush_denormals: bool = True,
    ) -> None:
        ort = _onnxruntime()
        self.device = resolve_device(device)
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "backend='onnxruntime' on CUDA needs onnxruntime-gpu (CUDAExecutionProvider); "
                    f"available providers: {ort.get_available_providers()}"
                )
            index = int(self.device.partition(":")[2] or 0)
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        if exporter not in ("auto", "dynamo"):
            raise ValueError(f"exporter must be 'auto' or 'dynamo', not {exporter!r}")
        self.threads = threads or _default_threads()
        on_cpu = not self.device.startswith("cuda")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if on_cpu else self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle workers sleep instead of spinning: with other busy processes on the machine (Beam
        # runs several SDK workers per VM) spinning threads steal the cores the work needs;
        # measured with one core busy elsewhere: 55 img/s without spinning, 33 with.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        graph = _export_onnx(module) if exporter == "auto" else _export_onnx_dynamo(copy.deepcopy(module).float().eval())
        self.session = ort.InferenceSession(graph, sess_options=options, providers=providers)
        self._input = self.session.get_inputs()[0].name
        # On CPU every run, one crop or many, is on the pool's threads, where denormals are flushed
        # (a single-threaded session computes on the thread that calls it); the caller's thread
        # keeps its mode. ORT's own "session.set_denormal_as_zero" only reaches its intra-op pool.
        self.flush_denormals = bool(flush_denormals) and on_cpu
        self._pool = _network_pool(self.threads, "osnet-ort", self.flush_denormals) if on_cpu else None
        self._check_against(module)

    def _check_against(self, module: nn.Module) -> None:
        _check_export(self, module)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self._input: batch})
        return np.asarray(features, dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch)
        if self._pool is None:
            return self._run(batch)
        if len(batch) < 2:
            return self._pool.submit(self._run, batch).result()
        return np.concatenate(list(self._pool.map(self._run, np.split(batch, len(batch)))))

    def map_crops(self, prepare: Callable[[Any], np.ndarray], crops: Sequence[Any]) -> np.ndarray:
        """Features of ``crops``, each prepared (``prepare(crop)`` -> float32 (1, 3, H, W)) and
        run on the same pool thread: the preprocessing uses every core too, between inferences,
        instead of the caller's thread alone (Pillow and numpy release the GIL). CPU only."""
        if self._pool is None:
            raise RuntimeError("map_crops runs on the CPU pool; on CUDA call the backend on a batch")
        return _map_crops(self._pool, lambda crop: self._run(_check_batch(prepare(crop))), crops)


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeError(
            "precision='bf16' on CPU runs on OpenVINO, which is not installed (pip install 'openvino>=2024.0')"
        ) from exc
    return openvino


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
        return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


def check_precision(device: str, precision: str) -> None:
    """The one rule for which precision runs on which device; raises ValueError if not allowed.

    - ``fp32``: everywhere.
    - ``fp16``: CUDA only (torch).
    - ``bf16``: CUDA (torch), or CPU cores with native bf16 (AVX512-BF16 or AMX), through
      OpenVINO. Opt-in only: ``auto`` never picks it, since its features are not fp32's
      (bench/README.md, "CPU bf16": min cosine 0.998 on trained weights).

    ``device`` is "cpu", "cuda[:N]" or "auto" (this machine's: CUDA when torch sees a GPU). The
    CPU check looks at *this* machine's cores: call it where the job runs, or on a launcher of
    the same machine type.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = device == "cuda" or device.startswith("cuda:")
    if on_cuda or precision == "fp32":
        return
    if precision == "fp16":
        raise ValueError("precision='fp16' needs CUDA; on CPU use fp32, or bf16 on cores with AVX512-BF16/AMX")
    if not cpu_supports_bf16():
        raise ValueError(
            "precision='bf16' on CPU needs cores with native bf16 (AVX512-BF16 or AMX; e.g. Intel Xeon "
            "Cooper Lake / Sapphire Rapids or later, AMD Zen 4 or later); this CPU has neither: use fp32"
        )


class OpenVinoBackend:
    """OpenVINO on the graph exported from the module, computing in bf16 (CPU only, opt-in).

    Like :class:`OnnxRuntimeBackend` on CPU: one single-crop inference per crop, run concurrently on
    ``threads`` Python threads (``InferRequest.infer`` releases the GIL), each with its own
    request on a model compiled for one crop of the batch's height and width (compiled on first
    use of a size; static shapes are what OpenVINO's CPU kernels are fastest on). OpenVINO runs
    the requests on its own stream threads (one per core), with its denormals switch on; the
    Python threads only wait. Features are returned as float32.
    """

    name = "openvino"

    def __init__(self, module: nn.Module, device: str = "cpu", threads: int | None = None, precision: str = "bf16") -> None:
        if resolve_device(device) != "cpu":
            raise ValueError("the openvino backend runs on CPU only")
        if precision != "bf16":
            raise ValueError(f"the openvino backend runs bf16 only (fp32 is ONNX Runtime's), not {precision!r}")
        check_precision("cpu", precision)
        ov = _openvino()
        self.device, self.precision = "cpu", precision
        self.threads = threads or _default_threads()
        self._core = ov.Core()
        with tempfile.TemporaryDirectory(prefix="osnet-openvino-") as folder:
            path = os.path.join(folder, "osnet.onnx")
            with open(path, "wb") as graph:
                graph.write(_export_onnx(module))
            self._model = self._core.read_model(path)
        self._config = {
            "INFERENCE_PRECISION_HINT": "bf16",
            "PERFORMANCE_HINT": "THROUGHPUT",
            "NUM_STREAMS": str(self.threads),
            "INFERENCE_NUM_THREADS": str(self.threads),
            # OpenVINO computes on its own stream threads, not the caller's: its own switch sets
            # flush-to-zero / denormals-are-zero there.
            "CPU_DENORMALS_OPTIMIZATION": "YES",
        }
        self._compiled: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool = _network_pool(self.threads, "osnet-openvino")
        _check_export(self, module, min_cosine=_BF16_PROBE_MIN_COSINE, what="the OpenVINO bf16 model")

    def _compiled_for(self, height: int, width: int) -> Any:
        with self._lock:
            compiled = self._compiled.get((height, width))
            if compiled is None:
                model = self._model.clone()
                model.reshape([1, 3, height, width])
                compiled = self._core.compile_model(model, "CPU", self._config)
                self._compiled[(height, width)] = compiled
        return compiled

    def _run_one(self, crop: np.ndarray) -> np.ndarray:
        key = crop.shape[2:]
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(key)
        if request is None:
            request = requests[key] = self._compiled_for(*key).create_infer_request()
        request.infer({0: crop})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch)
        return _map_crops(self._pool, self._run_one, np.split(batch, len(batch)) if len(batch) else [])

    def map_crops(self, prepare: Callable[[Any], np.ndarray], crops: Sequence[Any]) -> np.ndarray:
        """As :meth:`OnnxRuntimeBackend.map_crops`: each crop prepared and run on one pool thread."""
        return _map_crops(self._pool, lambda crop: self._run_one(_check_batch(prepare(crop))), crops)


def _resolve_backend_name(backend: str, device: str, precision: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    on_cuda = device.startswith("cuda")
    if backend != "auto":
        return backend
    if on_cuda:
        return "torch"  # cuDNN eager is fast, and runs fp16/bf16
    if precision == "bf16":
        return "openvino"  # the only CPU runtime here that computes in bf16, and it is faster
    try:
        _onnxruntime()
    except RuntimeError:
        return "torch"
    return "onnxruntime"


def create_backend(
    module: nn.Module,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
) -> FeatureBackend:
    """A runtime for ``module`` (an eval-mode OSNet).

    Args:
        backend: "torch", "onnxruntime", "openvino", or "auto": ONNX Runtime on CPU in fp32 (~2.4x
            faster than eager torch there), OpenVINO on CPU in bf16, torch on CUDA.
        device: "auto" (CUDA when available), "cpu" or "cuda[:N]".
        precision: "fp32"; "fp16" (CUDA); "bf16" (CUDA, or CPU cores with AVX512-BF16/AMX:
            see :func:`check_precision`). Never lowered without being asked.
        threads: CPU threads for the runtime (default: the cores this process may use).
    Raises:
        RuntimeError: CUDA requested but unavailable; onnxruntime requested but not installed.
        ValueError: an unknown option, or reduced precision where it is not supported.
    """
    resolved_device = resolve_device(device)
    check_precision(resolved_device, precision)
    name = _resolve_backend_name(backend, resolved_device, precision)
    on_cuda = resolved_device.startswith("cuda")
    if name == "openvino":
        return OpenVinoBackend(module, resolved_device, threads, precision)
    if name == "onnxruntime":
        if precision != "fp32":
            raise ValueError(f"the onnxruntime backend runs fp32 only; use backend='auto' for {precision}")
        return OnnxRuntimeBackend(module, resolved_device, threads)
    if precision != "fp32" and not on_cuda:
        raise ValueError(
            f"the torch backend runs {precision} on CUDA only (on CPU it is no faster than fp32); "
            f"use backend='auto' (OpenVINO) for bf16 on CPU"
        )
    return TorchBackend(module, resolved_device, precision, threads)


def default_batch_size(backend_name: str, device: str) -> int:
    """The batch size that gave the best throughput for this backend on this kind of device."""
    if backend_name not in _CPU_BATCH:
        raise ValueError(f"unknown backend {backend_name!r}")
    if device.startswith("cuda"):
        return _CUDA_BATCH
    return _CPU_BATCH[backend_name]


def cuda_batch_size(device: str = "cuda") -> int:
    """The CUDA batch size for the GPU at hand: :data:`_CUDA_BATCH`, or less where 16 processes'
    batches would not fit its memory (a power of two, at least 16): 512 on 80 GB and larger
    cards, 256 on 40 GB, 128 on 24 GB (L4), 64 on 16 GB (T4)."""
    total = torch.cuda.get_device_properties(torch.device(device).index or 0).total_memory
    fits = total // (_CUDA_PROCESSES_PER_GPU * _CUDA_BYTES_PER_CROP)
    size = _CUDA_BATCH
    while size > 16 and size > fits:
        size //= 2
    return size


def planned_runtime(backend: str = "auto", device: str = "auto", precision: str = "fp32") -> tuple[str, str, int]:
    """``(backend, device, batch size)`` for options as given, decided where the job is built.

    For sizing batches before any model exists (Beam's ``BatchElements`` is configured when the
    graph is built, possibly on a launcher without the workers' GPU): ``device="cuda"`` is taken
    at its word without checking for a GPU here, and only ``"auto"`` looks at this machine.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    name = _resolve_backend_name(backend, device, precision)
    return name, device, default_batch_size(name, device)


def planned_batch_size(backend: str = "auto", device: str = "auto", precision: str = "fp32") -> int:
    """The batch size of :func:`planned_runtime`."""
    return planned_runtime(backend, device, precision)[2]
