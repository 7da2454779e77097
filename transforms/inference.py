"""Beam's RunInference around our feature engine: the model is loaded once per worker process.

:class:`OsNetModelHandler` follows Beam's ``ModelHandler`` interface: it carries the launcher's
:class:`model.policy.RuntimePlan` (which sizes Beam's batches), ``load_model`` builds a
:class:`model.engine.FeatureEngine` from the plan as the worker settles it (weights read from any
Beam filesystem and cached on local disk), and ``run_inference`` turns a batch of uint8 crops into
512-d float32 features. :class:`EncodeCrops`
keys each crop by its row so the features rejoin the row they came from, and turns a batch the
model raised on into error records instead of a failed job.

On CPU, ``run_inference`` only hands the batch to the model's threads and returns; the step after
RunInference collects each batch's features :data:`BATCHES_AHEAD` batches later. Meanwhile the
pipeline's thread reads, parses and decodes the next batches instead of waiting for the network
(bench/README.md, "Overlap inside one bundle"). Beam's ``inference_batch_latency_micro_secs``
then times that hand-off, not the network. On a GPU, and with a model shared across processes,
``run_inference`` computes the features before it returns.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import sys
import tempfile
import threading
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from transforms import beam_ml  # noqa: F401  (first: it imports RunInference's module without torch)
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)

from model.engine import FeatureEngine
from model.graph_cache import ExportedGraph, exported_graph
from model.policy import RuntimePlan, local_gpu, plan_here, plan_runtime, settle
from model.preprocess import resize_batch
from model.runtimes import runtime_for_graph
from model.runtimes.cpu import PendingFeatures
from transforms.errors import ERRORS_TAG, error_record
from transforms import metrics
from transforms.decode import restore_image_cell
from transforms.reasons import Reason

_LOG = logging.getLogger(__name__)
_CACHE_DIR = os.path.join(tempfile.gettempdir(), "osnet-beam-weights")

# One engine per configuration per process, whatever number of DoFn copies or threads ask.
_ENGINES: dict[tuple, FeatureEngine] = {}
_ENGINES_LOCK = threading.Lock()
#: How many times this process built an engine from weights (tests check it stays at one).
load_count = 0
#: Batches whose features the step after RunInference waits for only once this many later
#: batches have been handed to the model: the model's threads always have a batch queued while
#: the pipeline's thread prepares the next. Crops held meanwhile: about (1 + this) batches.
BATCHES_AHEAD = 2


class FeatureSlot(NamedTuple):
    """What ``run_inference`` returns as a crop's inference: row ``index`` of its batch's
    features, which may still be running (:class:`model.runtimes.cpu.PendingFeatures`)."""

    batch: PendingFeatures
    index: int

    def features(self) -> np.ndarray:
        """The crop's float32 (512,) features, once its batch is done (waits for it)."""
        return self.batch.result()[self.index]


def local_weights(path: str) -> str:
    """A local file holding the weights at ``path`` (local, gs://, s3://, ...): copied once.

    Remote files are copied to a per-machine cache named by the path's hash, written to a
    temporary name first so a reader never sees a half-copied file.
    """
    if os.path.isfile(path):
        return path
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    target = os.path.join(_CACHE_DIR, f"{digest}-{os.path.basename(path)}")
    if os.path.isfile(target):
        return target
    os.makedirs(_CACHE_DIR, exist_ok=True)
    partial = f"{target}.{os.getpid()}.{threading.get_ident()}.partial"
    with FileSystems.open(path) as source, open(partial, "wb") as sink:
        while chunk := source.read(1 << 20):
            sink.write(chunk)
    os.replace(partial, target)
    _LOG.info("copied weights %s to %s", path, target)
    return target


def graph_for_workers(weights: str, arch: Optional[str]) -> ExportedGraph:
    """The checked ONNX graph this machine's workers run for ``weights`` (a local file) as
    ``arch``, exported by a child process the first time (:mod:`model.graph_cache`). The launcher
    calls it before local workers start, so that they find it instead of each exporting it.

    Raises:
        model.contract.CheckpointError: the weights cannot be used.
        model.graph_cache.GraphExportError: the export failed otherwise; the message says why.
    """
    return exported_graph(weights, arch, _CACHE_DIR)


def _launch_plan(backend: str, device: str, precision: str, batch_size: Optional[int]) -> RuntimePlan:
    """The plan a handler built without one makes: for this machine's GPU, if any (an explicit
    ``device="cuda"`` is taken at its word, without one), leaving the CPU's bf16 check to the
    worker."""
    gpu = local_gpu("auto") if device != "cpu" else None
    return plan_runtime(backend, device, precision, batch_size, gpu, cpu_is_here=False)


class OsNetModelHandler(ModelHandler[np.ndarray, np.ndarray, FeatureEngine]):
    """Crops (uint8 H x W x C arrays) in, 512-d float32 features out.

    ``plan`` is the launcher's :func:`model.policy.plan_runtime` for these options (the job's
    builder passes it, made for the workers' GPU); without one the handler plans for this machine.
    """

    def __init__(
        self,
        weights: str,
        *,
        arch: Optional[str] = None,
        device: str = "auto",
        backend: str = "auto",
        precision: str = "fp32",
        batch_size: Optional[int] = None,
        channel_order: str = "rgb",
        threads: Optional[int] = None,
        share_across_processes: bool = False,
        plan: Optional[RuntimePlan] = None,
    ):
        super().__init__()
        self._weights = weights
        self._arch = arch
        self._device = device
        self._backend = backend
        self._precision = precision
        self._batch_size = batch_size
        self._channel_order = channel_order
        self._threads = threads
        self._share_across_processes = share_across_processes
        self._plan = plan or _launch_plan(backend, device, precision, batch_size)

    @property
    def plan(self) -> RuntimePlan:
        """The launcher's plan: what Beam's batches are sized for."""
        return self._plan

    def _config(self) -> tuple:
        return (
            self._weights,
            self._arch,
            self._plan,
            self._device,
            self._backend,
            self._precision,
            self._batch_size,
            self._channel_order,
            self._threads,
        )

    def worker_plan(self) -> RuntimePlan:
        """The plan this worker runs: its own for these options, with the launcher's batch size
        unless its GPU holds less (:func:`model.policy.settle`); one warning where they differ."""
        here = plan_here(self._backend, self._device, self._precision, self._batch_size)
        settled, warning = settle(self._plan, here)
        if warning:
            _LOG.warning("%s", warning)
        return settled

    def load_model(self) -> FeatureEngine:
        global load_count
        key = self._config()
        with _ENGINES_LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                engine = self._build_engine(self.worker_plan())
                _ENGINES[key] = engine
                load_count += 1
        return engine

    def _build_engine(self, plan: RuntimePlan) -> FeatureEngine:
        """ONNX Runtime runs the checkpoint's graph, exported and checked once per machine by a
        child process (:mod:`model.graph_cache`): this process needs no torch for it. The other
        runtimes run the module itself."""
        weights = local_weights(self._weights)
        graph = None
        if plan.backend == "onnxruntime":
            try:
                graph = graph_for_workers(weights, self._arch)
            except OSError as error:  # no writable temporary folder: export here, as before the cache
                _LOG.warning("cannot cache the ONNX graph in %s (%s); exporting it in this process", _CACHE_DIR, error)
        if graph is not None:
            runtime = runtime_for_graph(graph.read(), plan, self._threads)
            engine = FeatureEngine(None, plan, runtime=runtime, channel_order=self._channel_order)
            arch, source = graph.arch, f"{self._weights} (ONNX graph {graph.path})"
        else:
            from model.checkpoint import load_osnet

            module = load_osnet(weights, arch=self._arch)
            engine = FeatureEngine(module, plan, threads=self._threads, channel_order=self._channel_order)
            arch, source = module.arch, self._weights
        torch_here = "torch loaded" if "torch" in sys.modules else "torch not loaded"
        _LOG.info("loaded OSNet %s from %s: %s; %s in this process", arch, source, plan.describe(), torch_here)
        return engine

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: FeatureEngine,
        inference_args: Optional[dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        """One :class:`FeatureSlot` per crop. On CPU the batch is only started: each crop is
        resized, standardised and run on one of the model's threads, so the preprocessing is
        spread over the cores as the network is (bench/README.md), while this thread goes on.
        A crop that is not an image is refused here, before any work; a failure of the network
        comes out of the slot, and :class:`EncodeCrops` turns it into error records."""
        if not self._share_across_processes and model.preprocesses_in_network_threads:
            features = model.submit_crops(batch)
        else:
            # Resized here, in the worker process that decoded the crops: with a model shared by
            # the machine's processes, the model's process then only standardises and runs the
            # network; on a GPU the device standardises.
            pixels = resize_batch(batch, channel_order=self._channel_order)
            features = PendingFeatures.settled(model.encode_pixels(pixels))
        return [PredictionResult(crop, FeatureSlot(features, index)) for index, crop in enumerate(batch)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(int(crop.nbytes) for crop in batch)

    def get_metrics_namespace(self) -> str:
        return metrics.NAMESPACE

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        """Batches of exactly the plan's batch size (the last one of a bundle excepted), the
        engine's chunk: one network call each, no remainder chunk that leaves cores or the GPU
        half idle."""
        size = self._plan.batch_size
        return {"min_batch_size": size, "max_batch_size": size}

    def share_model_across_processes(self) -> bool:
        return self._share_across_processes


def _inference_failed(row: Mapping[str, Any], crop: np.ndarray, batch_size: int, exception: BaseException,
                      image_column: str) -> dict:
    """The error record of a row whose batch the model failed on, its image cell written back
    (the decode step dropped it; the error output promises it)."""
    Metrics.counter(metrics.NAMESPACE, metrics.error_counter(Reason.INFERENCE_FAILED)).inc()
    detail = f"model failed on a batch of {batch_size}: {type(exception).__name__}: {exception}"
    return error_record(Reason.INFERENCE_FAILED.value, detail, row=restore_image_cell(row, image_column, crop))


class _CollectFeatures(beam.DoFn):
    """``(row, PredictionResult)`` to ``(row, features)`` once the row's batch is done, waiting
    for a batch only when :data:`BATCHES_AHEAD` later ones have been started (and at the end of
    the bundle); each row keeps its window and timestamp. Rows of a batch the model failed on go
    to the ``errors`` output."""

    def __init__(self, image_column: str):
        self._image_column = image_column

    def setup(self) -> None:
        self._encoded = Metrics.counter(metrics.NAMESPACE, metrics.ROWS_ENCODED)

    def start_bundle(self) -> None:
        # batches in the order started: (features, [(row, crop, index, timestamp, window), ...])
        self._started: collections.deque = collections.deque()

    def process(self, keyed: tuple[Mapping[str, Any], PredictionResult], timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam) -> Iterator[Any]:
        row, result = keyed
        slot: FeatureSlot = result.inference
        if not self._started or self._started[-1][0] is not slot.batch:
            while len(self._started) >= BATCHES_AHEAD:
                yield from self._collect(*self._started.popleft())
            self._started.append((slot.batch, []))
        self._started[-1][1].append((row, result.example, slot.index, timestamp, window))

    def finish_bundle(self) -> Iterator[Any]:
        while self._started:
            yield from self._collect(*self._started.popleft())

    def _collect(self, batch: PendingFeatures, members: list) -> Iterator[Any]:
        try:
            features = batch.result()
        except Exception as exception:  # noqa: BLE001  (any failure of the model: its rows are errors)
            for row, crop, _, timestamp, window in members:
                record = _inference_failed(row, crop, len(members), exception, self._image_column)
                yield beam.pvalue.TaggedOutput(ERRORS_TAG, WindowedValue(record, timestamp, (window,)))
            return
        for row, _, index, timestamp, window in members:
            self._encoded.inc()
            yield WindowedValue((row, features[index]), timestamp, (window,))


def _failed_batch_to_errors(failure: tuple[Sequence[Any], BaseException], image_column: str) -> Iterator[dict]:
    batch, exception = failure
    for row, crop in batch:
        yield _inference_failed(row, crop, len(batch), exception, image_column)


class EncodeCrops(beam.PTransform):
    """``(row, crop)`` to ``(row, features)`` with RunInference; model failures become errors.

    ``row`` comes from :class:`transforms.decode.DecodeCrops` without its image cell; the error
    record of a row the model failed on has the cell back (``image_column``), from the crop.
    Expands to a dict with ``features`` and ``errors``.
    """

    def __init__(self, handler: OsNetModelHandler, image_column: str):
        super().__init__()
        self._handler = handler
        self._image_column = image_column

    def expand(self, crops: beam.PCollection) -> dict[str, beam.PCollection]:
        predictions, failures = crops | "RunInference" >> RunInference(
            KeyedModelHandler(self._handler)
        ).with_exception_handling()
        collected = predictions | "Features" >> beam.ParDo(_CollectFeatures(self._image_column)).with_outputs(
            ERRORS_TAG, main="features"
        )
        failed = failures.failed_inferences | "FailedBatches" >> beam.FlatMap(
            _failed_batch_to_errors, self._image_column
        )
        errors = (failed, collected[ERRORS_TAG]) | "ModelErrors" >> beam.Flatten()
        return {"features": collected.features, ERRORS_TAG: errors}
