"""Timestamps of encoded rows, recorded inside a DirectRunner pipeline running in this process.

A module of its own (not ``run_benchmark``, which runs as ``__main__``) so that Beam's pickler
refers to it by name: the unpickled DoFn then appends to this very list instead of to a copy.
Only meaningful with the in-process DirectRunner (``direct_running_mode=in_memory``, the default).
"""
from __future__ import annotations

import time

STAMPS: list[float] = []


def stamp(element: object) -> tuple:
    """FlatMap body: note when one encoded row passes, emit nothing."""
    STAMPS.append(time.perf_counter())
    return ()
