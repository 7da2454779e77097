"""CPU floating-point mode and the threads the CPU runtimes run the network on.

Model-zoo checkpoints hold denormal weights, their activations go denormal too, and x86 cores
take a slow path for every operation on a denormal (bench/README.md, "CPU speed switches"). The
runtimes therefore run the network on threads of their own with denormals flushed to zero; the
threads that call a runtime keep their mode, so the user's code in the same process is not
affected. Flushing changes no feature beyond cos 1 - 1e-5 (tests/test_encoder_reference.py):
denormals are below 1.2e-38, far under any activation that matters.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
import torch

from model.osnet import FEATURE_DIM

__all__ = ["default_threads", "map_crops", "network_pool", "thread_flushes_denormals"]


def default_threads() -> int:
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
    per thread in OpenMP."""
    torch.set_flush_denormal(True)
    _set_torch_threads(torch_threads)


def _set_torch_threads(torch_threads: int | None = None) -> None:
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)


def network_pool(workers: int, prefix: str, flush: bool = True, torch_threads: int | None = None) -> ThreadPoolExecutor:
    """Threads that run the network, with denormals flushed in them (unless ``flush`` is False,
    for comparisons)."""
    initializer = _flush_denormals_in_this_thread if flush else _set_torch_threads
    return ThreadPoolExecutor(workers, prefix, initializer=initializer, initargs=(torch_threads,))


def map_crops(pool: ThreadPoolExecutor, run: Callable[[Any], np.ndarray], items: Sequence[Any]) -> np.ndarray:
    """``run`` over ``items`` on ``pool``, the (1, 512) results stacked in order."""
    if len(items) == 0:
        return np.empty((0, FEATURE_DIM), np.float32)
    return np.concatenate(list(pool.map(run, items)))
