"""Live progress from the workers to the launcher, through a folder on the launcher's machine.

Beam's metrics reach the launcher only when a local job has finished, so for a progress bar each
worker process keeps its own running totals and, at most every ``FLUSH_EVERY_S`` seconds, replaces
one small JSON file in a folder the launcher watches: ``{"rows": n, "errors": n, ...}``. The
launcher sums the files (:func:`read_progress`). This only works where the workers share the
launcher's disk (DirectRunner in-process or multi-processing, the portable runner with LOOPBACK
or EXTERNAL workers on the same machine); remote runners report through their job's metrics.

A count is a progress estimate, not accounting: a retried bundle counts twice here, while the
summary line and the manifest come from Beam's committed metrics.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any, Iterator

import apache_beam as beam

#: Seconds between two writes of a worker's totals.
FLUSH_EVERY_S = 0.5
_SUFFIX = ".progress.json"


class ProgressWriter:
    """One process's running totals, flushed to ``directory`` now and then; thread-safe."""

    _by_directory: dict[tuple[str, int], "ProgressWriter"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, directory: str):
        self._path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}")
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._last_flush = 0.0

    @classmethod
    def for_directory(cls, directory: str) -> "ProgressWriter":
        """The writer of this process for ``directory`` (one file per process)."""
        key = (directory, os.getpid())  # a forked worker gets a file of its own
        with cls._registry_lock:
            writer = cls._by_directory.get(key)
            if writer is None:
                writer = cls._by_directory[key] = cls(directory)
            return writer

    def add(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + count
            if time.monotonic() - self._last_flush < FLUSH_EVERY_S:
                return
            self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._last_flush = time.monotonic()
        partial = f"{self._path}.{threading.get_ident()}.tmp"
        try:
            with open(partial, "w") as stream:
                json.dump(self._counts, stream)
            os.replace(partial, self._path)
        except OSError:  # the launcher removed the folder: the job is over or stopping
            pass


def read_progress(directory: str) -> dict[str, int]:
    """The totals of every worker process that reported into ``directory``."""
    totals: dict[str, int] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return totals
    for name in names:
        if not name.endswith(_SUFFIX):
            continue
        try:
            with open(os.path.join(directory, name)) as stream:
                counts = json.load(stream)
        except (OSError, ValueError):
            continue  # replaced or removed while we read it: the next poll sees it
        for kind, value in counts.items():
            totals[kind] = totals.get(kind, 0) + int(value)
    return totals


class CountProgress(beam.DoFn):
    """Passes elements through unchanged, counting them as ``kind`` for the launcher's bar."""

    def __init__(self, directory: str, kind: str):
        self._directory = directory
        self._kind = kind

    def setup(self) -> None:
        self._writer = ProgressWriter.for_directory(self._directory)

    def process(self, element: Any) -> Iterator[Any]:
        self._writer.add(self._kind)
        yield element

    def finish_bundle(self) -> None:
        self._writer.flush()
