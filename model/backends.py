"""Runtimes that turn a preprocessed batch into features: torch eager, or ONNX Runtime.

Both take the *same* loaded :class:`~model.osnet.OSNet`; the ONNX model is exported from it in
memory when the backend is created, so there is no second weights file to keep in sync, and the
export is checked against torch on a probe batch before it is used.

Measured on this project's 2-core CPU machine (osnet_ibn_x1_0, fp32, batch 8): torch eager about
45 img/s, ONNX Runtime about 107 img/s (both slower at larger batches), so ``backend="auto"``
picks ONNX Runtime on CPU and torch on CUDA.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from model.preprocess import check_pixels

__all__ = [
    "BACKENDS",
    "FeatureBackend",
    "OnnxRuntimeBackend",
    "TorchBackend",
    "create_backend",
    "cuda_batch_size",
    "default_batch_size",
    "planned_batch_size",
    "resolve_device",
]

BACKENDS = ("auto", "torch", "onnxruntime")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Chosen by measurement on the 2-core CPU machine (osnet_ibn_x1_0): torch eager peaks at batch
# 4-8 (32/45/45-47/31-38/28 img/s at 1/4/8/16/32). ONNX Runtime, as OnnxRuntimeBackend runs it
# (single crops on one thread per core), is flat from 8 to 64 (141-144 img/s), and a batch of 32
# leaves its threads idle at most once per 32 crops: +7% end to end over 8 (bench/README.md, R4).
# On a GPU large batches amortise kernel launches and, with several SDK processes per GPU, the
# switches between their contexts: on an H200 (fp16), model only 6,000-8,400 / 8,300-9,200 /
# 10,200-10,900 img/s at batch 128 / 256 / 512, and the pipeline with 16 processes 5,200-6,700
# rows/s at 128 against 8,300 at 512 (bench/README.md, "GPU").
_CPU_BATCH = {"torch": 8, "onnxruntime": 32}
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

    def __init__(self, module: nn.Module, device: str = "cpu", precision: str = "fp32", threads: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
        self.device = resolve_device(device)
        on_cuda = self.device.startswith("cuda")
        if precision != "fp32" and not on_cuda:
            raise ValueError(f"precision={precision!r} needs CUDA; on CPU only fp32 is supported")
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

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self._pin:
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _run(self, tensor: torch.Tensor) -> np.ndarray:
        tensor = tensor.to(dtype=self.dtype, memory_format=self._memory_format)
        with torch.inference_mode():
            features = self.module(tensor)
        return features.float().cpu().numpy()

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
        self, module: nn.Module, device: str = "cpu", threads: int | None = None, *, exporter: str = "auto"
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
        self._pool = ThreadPoolExecutor(self.threads, "osnet-ort") if on_cpu and self.threads > 1 else None
        self._check_against(module)

    def _check_against(self, module: nn.Module) -> None:
        """Refuse an export that does not compute what the torch module computes."""
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(_PROBE_SHAPE, generator=generator)
        reference_module = copy.deepcopy(module).float().cpu().eval()
        with torch.inference_mode():
            expected = reference_module(probe).numpy()
        actual = self(probe.numpy())
        cosine = np.sum(expected * actual, axis=1) / (
            np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1) + 1e-12
        )
        if actual.shape != expected.shape or not np.all(cosine >= _PROBE_MIN_COSINE):
            raise RuntimeError(
                f"the ONNX export does not match the torch module (cosine {cosine.tolist()}); "
                "use backend='torch'"
            )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self._input: batch})
        return np.asarray(features, dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch)
        if self._pool is None or len(batch) < 2:
            return self._run(batch)
        return np.concatenate(list(self._pool.map(self._run, np.split(batch, len(batch)))))


def _resolve_backend_name(backend: str, device: str, precision: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend != "auto":
        return backend
    if device.startswith("cuda") or precision != "fp32":
        return "torch"  # cuDNN eager is fast, and only torch runs fp16/bf16 here
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
        backend: "torch", "onnxruntime", or "auto": ONNX Runtime on CPU (~2.4x faster than eager
            torch there), torch on CUDA.
        device: "auto" (CUDA when available), "cpu" or "cuda[:N]".
        precision: "fp32", or "fp16"/"bf16" (CUDA and the torch backend only).
        threads: CPU threads for the runtime (default: the cores this process may use).
    Raises:
        RuntimeError: CUDA requested but unavailable; onnxruntime requested but not installed.
        ValueError: an unknown option, or reduced precision where it is not supported.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    resolved_device = resolve_device(device)
    if precision != "fp32" and not resolved_device.startswith("cuda"):
        raise ValueError(f"precision={precision!r} needs CUDA; on CPU only fp32 is supported")
    name = _resolve_backend_name(backend, resolved_device, precision)
    if name == "onnxruntime":
        if precision != "fp32":
            raise ValueError(f"the onnxruntime backend runs fp32 only; use backend='torch' for {precision}")
        return OnnxRuntimeBackend(module, resolved_device, threads)
    return TorchBackend(module, resolved_device, precision, threads)


def default_batch_size(backend_name: str, device: str) -> int:
    """The batch size that gave the best throughput for this backend on this kind of device."""
    if backend_name not in ("torch", "onnxruntime"):
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


def planned_batch_size(backend: str = "auto", device: str = "auto", precision: str = "fp32") -> int:
    """:func:`default_batch_size` for options as given, decided where the job is built.

    For sizing batches before any model exists (Beam's ``BatchElements`` is configured when the
    graph is built, possibly on a launcher without the workers' GPU): ``device="cuda"`` is taken
    at its word without checking for a GPU here, and only ``"auto"`` looks at this machine.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    return default_batch_size(_resolve_backend_name(backend, device, precision), device)
