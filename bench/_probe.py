"""Timestamps of encoded rows, recorded inside a running pipeline.

A module of its own (not ``run_benchmark``, which runs as ``__main__``) so that Beam's pickler
refers to it by name: the unpickled DoFn then appends to this very list instead of to a copy.

Two probes: :func:`stamp` (a FlatMap body) keeps ``time.perf_counter()`` stamps in this process,
for the in-process DirectRunner (``direct_running_mode=in_memory``, the default); and
:class:`StampToFiles` writes wall-clock stamps to files at the end of each bundle, for runs whose
rows are encoded in other processes (``direct_running_mode=multi_processing``).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import apache_beam as beam

STAMPS: list[float] = []


def stamp(element: object) -> tuple:
    """FlatMap body: note when one encoded row passes, emit nothing."""
    STAMPS.append(time.perf_counter())
    return ()


class StampToFiles(beam.DoFn):
    """Notes ``time.time()`` for each row that passes, emits nothing; a file per bundle."""

    def __init__(self, directory: str):
        self._directory = directory

    def start_bundle(self) -> None:
        self._stamps: list[float] = []

    def process(self, element: object):
        self._stamps.append(time.time())
        return ()

    def finish_bundle(self) -> None:
        if self._stamps:
            name = f"stamps-{os.getpid()}-{uuid.uuid4().hex}.txt"
            Path(self._directory, name).write_text("\n".join(repr(s) for s in self._stamps))


def read_stamp_files(directory: str) -> list[float]:
    """Every stamp :class:`StampToFiles` wrote in ``directory``, sorted."""
    stamps: list[float] = []
    for path in Path(directory).glob("stamps-*.txt"):
        stamps.extend(float(line) for line in path.read_text().split())
    return sorted(stamps)
