"""Beam's RunInference around our encoder: the model is loaded once per worker process.

:class:`OsNetModelHandler` follows Beam's ``ModelHandler`` interface: ``load_model`` builds an
:class:`model.OsNetEncoder` (weights read from any Beam filesystem and cached on local disk), and
``run_inference`` turns a batch of uint8 crops into 512-d float32 features. :class:`EncodeCrops`
keys each crop by its row so the features rejoin the row they came from, and turns a batch the
model raised on into error records instead of a failed job.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)

from model import OsNetEncoder
from model.backends import planned_batch_size
from model.preprocess import resize_batch
from transforms.errors import ERRORS_TAG, error_record
from transforms import metrics
from transforms.decode import restore_image_cell
from transforms.reasons import Reason

_LOG = logging.getLogger(__name__)
_CACHE_DIR = os.path.join(tempfile.gettempdir(), "osnet-beam-weights")

# One encoder per configuration per process, whatever number of DoFn copies or threads ask.
_ENCODERS: dict[tuple, OsNetEncoder] = {}
_ENCODERS_LOCK = threading.Lock()
#: How many times this process built an encoder from weights (tests check it stays at one).
load_count = 0


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


class OsNetModelHandler(ModelHandler[np.ndarray, np.ndarray, OsNetEncoder]):
    """Crops (uint8 H x W x C arrays) in, 512-d float32 features out."""

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

    def _config(self) -> tuple:
        return (
            self._weights,
            self._arch,
            self._device,
            self._backend,
            self._precision,
            self._batch_size,
            self._channel_order,
            self._threads,
        )

    def load_model(self) -> OsNetEncoder:
        global load_count
        key = self._config()
        with _ENCODERS_LOCK:
            encoder = _ENCODERS.get(key)
            if encoder is None:
                encoder = OsNetEncoder(
                    weight_filepath=local_weights(self._weights),
                    arch=self._arch,
                    GPU={"auto": None, "cuda": True, "cpu": False}[self._device],
                    backend=self._backend,
                    precision=self._precision,
                    batch_size=self._batch_size,
                    channel_order=self._channel_order,
                    threads=self._threads,
                )
                _ENCODERS[key] = encoder
                load_count += 1
                _LOG.info("loaded %s from %s", encoder, self._weights)
        return encoder

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: OsNetEncoder,
        inference_args: Optional[dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        if not self._share_across_processes and model.preprocesses_in_network_threads:
            # CPU: each crop is resized and normalised on the thread that then runs it, so the
            # preprocessing is spread over the cores as the network is (bench/README.md).
            features = model.encode_batch(batch)
        else:
            # Resized here, in the worker process that decoded the crops: with a model shared by
            # the machine's processes, the model's process then only normalises and runs the
            # network; on a GPU the device normalises.
            pixels = resize_batch(batch, channel_order=self._channel_order)
            features = model.encode_pixels(pixels)
        return [PredictionResult(crop, vector) for crop, vector in zip(batch, features)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(int(crop.nbytes) for crop in batch)

    def get_metrics_namespace(self) -> str:
        return metrics.NAMESPACE

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        """Batches of exactly the encoder's batch size (the last one of a bundle excepted): one
        backend call each, no remainder chunk that leaves cores or the GPU half idle."""
        size = self._batch_size or planned_batch_size(self._backend, self._device, self._precision)
        return {"min_batch_size": size, "max_batch_size": size}

    def share_model_across_processes(self) -> bool:
        return self._share_across_processes


class _ToFeatures(beam.DoFn):
    """``(row, PredictionResult)`` to ``(row, features)``, counted."""

    def setup(self) -> None:
        self._encoded = Metrics.counter(metrics.NAMESPACE, metrics.ROWS_ENCODED)

    def process(self, keyed: tuple[Mapping[str, Any], PredictionResult]) -> Iterator[Any]:
        row, result = keyed
        self._encoded.inc()
        yield row, np.asarray(result.inference, dtype=np.float32)


def _failed_batch_to_errors(failure: tuple[Sequence[Any], BaseException], image_column: str) -> Iterator[dict]:
    batch, exception = failure
    detail = f"model failed on a batch of {len(batch)}: {type(exception).__name__}: {exception}"
    counter = Metrics.counter(metrics.NAMESPACE, metrics.error_counter(Reason.INFERENCE_FAILED))
    for row, crop in batch:
        counter.inc()
        # the decode step dropped the cell; the error output promises it, so it is written back
        row = restore_image_cell(row, image_column, crop)
        yield error_record(Reason.INFERENCE_FAILED.value, detail, row=row)


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
        features = predictions | "Features" >> beam.ParDo(_ToFeatures())
        errors = failures.failed_inferences | "FailedBatches" >> beam.FlatMap(
            _failed_batch_to_errors, self._image_column
        )
        return {"features": features, ERRORS_TAG: errors}
