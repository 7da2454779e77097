"""CPU floating-point mode and the threads the CPU runtimes run the network on.

Model-zoo checkpoints hold denormal weights, their activations go denormal too, and x86 cores
take a slow path for every operation on a denormal (bench/README.md, "CPU speed switches"). The
runtimes therefore run the network on threads of their own with denormals flushed to zero; the
threads that call a runtime keep their mode, so the user's code in the same process is not
affected. Flushing changes no feature beyond cos 1 - 1e-5 (tests/test_encoder_reference.py):
denormals are below 1.2e-38, far under any activation that matters.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import os
import platform
import sys
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

import numpy as np

from model.contract import FEATURE_DIM

__all__ = [
    "PendingFeatures",
    "default_threads",
    "flush_denormals_in_this_thread",
    "map_crops",
    "network_pool",
    "submit_crops",
    "thread_flushes_denormals",
]


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


#: x86-64 MXCSR bits: FTZ (results that would be denormal become zero) and DAZ (denormal
#: inputs are read as zero); what ``torch.set_flush_denormal(True)`` sets.
_MXCSR_FTZ_DAZ = 0x8040
#: glibc/musl x86-64 ``fenv_t``: the 28-byte x87 environment, then MXCSR (4 bytes).
_FENV_SIZE, _MXCSR_OFFSET = 32, 28


@functools.lru_cache(maxsize=1)
def _libm() -> Optional[Any]:
    """The C maths library where its ``fenv_t`` layout is known (x86-64 Linux), else None."""
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:
        return None


def _set_mxcsr_flush(libm: Any) -> bool:
    """Set FTZ and DAZ in this thread's MXCSR through C99's ``fegetenv``/``fesetenv``."""
    env = (ctypes.c_ubyte * _FENV_SIZE)()
    if libm.fegetenv(env) != 0:
        return False
    mxcsr = int.from_bytes(bytes(env[_MXCSR_OFFSET:]), "little") | _MXCSR_FTZ_DAZ
    env[_MXCSR_OFFSET:] = list(mxcsr.to_bytes(4, "little"))
    return libm.fesetenv(env) == 0


def flush_denormals_in_this_thread() -> None:
    """Flush-to-zero / denormals-are-zero for the calling thread only (threads it starts later
    inherit it). On x86-64 Linux this sets the two MXCSR bits through the C library, so a process
    that only runs an exported graph needs no torch for it; elsewhere it is
    ``torch.set_flush_denormal(True)``, which does the same where the CPU has such a mode."""
    libm = _libm()
    if libm is not None and _set_mxcsr_flush(libm) and thread_flushes_denormals():
        return
    import torch

    torch.set_flush_denormal(True)


def _flush_denormals_in_this_thread(torch_threads: int | None = None) -> None:
    """Worker-thread initializer: denormals flushed in this thread, and torch's intra-op thread
    count, which is per thread in OpenMP (torch backend only)."""
    flush_denormals_in_this_thread()
    _set_torch_threads(torch_threads)


def _set_torch_threads(torch_threads: int | None = None) -> None:
    if torch_threads is not None:
        import torch  # only the torch backend passes a count

        torch.set_num_threads(torch_threads)


def network_pool(workers: int, prefix: str, flush: bool = True, torch_threads: int | None = None) -> ThreadPoolExecutor:
    """Threads that run the network, with denormals flushed in them (unless ``flush`` is False,
    for comparisons)."""
    initializer = _flush_denormals_in_this_thread if flush else _set_torch_threads
    return ThreadPoolExecutor(workers, prefix, initializer=initializer, initargs=(torch_threads,))


#: The started :class:`PendingFeatures` of this process that were pickled, by token: what their
#: pickles refer to. Weak: an entry goes when its object does.
_PICKLED: "weakref.WeakValueDictionary[int, PendingFeatures]" = weakref.WeakValueDictionary()
_TOKENS = itertools.count()


class PendingFeatures:
    """The features of a batch whose crops are being run on a pool: :meth:`result` waits for them.

    What lets a caller hand the network one batch and go on preparing the next while it runs
    (:meth:`model.engine.FeatureEngine.submit_crops`). :meth:`settled` wraps features (or a
    failure) already computed, so that a caller has one kind of result whichever runtime made it.

    Pickling a settled one carries its outcome. Pickling one started on a pool never waits: it
    gives a reference that only this process can resolve, and unpickling it anywhere else raises.
    Beam pickles a sample of the elements that carry these to estimate their size and drops the
    bytes; waiting there would hold the pipeline's thread for the network, batch after batch. An
    element that carries one must stay in the process that started it, as it does where the step
    that collects it is fused with RunInference's (every runner fuses consecutive ParDos).
    """

    __slots__ = ("_futures", "_features", "_error", "_token", "__weakref__")

    def __init__(self, futures: Sequence[Future]):
        self._futures: Optional[list[Future]] = list(futures)
        self._features: Optional[np.ndarray] = None
        self._error: Optional[BaseException] = None
        self._token: Optional[int] = next(_TOKENS)

    @classmethod
    def settled(cls, features: Optional[np.ndarray] = None, error: Optional[BaseException] = None) -> "PendingFeatures":
        """Features computed already (float32 (N, 512)), or the exception computing them raised."""
        if (features is None) == (error is None):
            raise ValueError("settled() takes the features or the error, not both")
        pending = cls.__new__(cls)
        pending._futures, pending._token = None, None
        pending._features = None if features is None else np.asarray(features, dtype=np.float32)
        pending._error = error
        return pending

    def done(self) -> bool:
        """Whether :meth:`result` would return (or raise) without waiting."""
        return self._futures is None or all(future.done() for future in self._futures)

    def _settle(self) -> np.ndarray:
        if self._futures is not None:
            try:
                self._features = (
                    np.concatenate([future.result() for future in self._futures])
                    if self._futures else np.empty((0, FEATURE_DIM), np.float32)
                )
            except Exception as error:  # noqa: BLE001  (the batch's outcome: raised to every caller)
                self._error = error
            # an interrupt while waiting (KeyboardInterrupt) leaves the batch pending, not failed
            self._futures = None
        if self._error is not None:
            raise self._error
        assert self._features is not None
        return self._features

    def result(self) -> np.ndarray:
        """float32 (N, 512) in the order of the crops; raises what the first failed crop raised."""
        return self._settle()

    def __reduce__(self) -> tuple:
        if self._token is None:
            return (PendingFeatures.settled, (self._features, self._error))
        _PICKLED[self._token] = self
        return (_started_here, (os.getpid(), self._token))


def _started_here(pid: int, token: int) -> PendingFeatures:
    """The :class:`PendingFeatures` a pickle refers to; raises where it was not started."""
    pending = _PICKLED.get(token) if pid == os.getpid() else None
    if pending is None:
        raise RuntimeError(
            f"features being computed by process {pid} cannot be read by process {os.getpid()}: the step "
            "that collects them must run in the process that started them (fused with RunInference's)"
        )
    return pending


def submit_crops(pool: ThreadPoolExecutor, run: Callable[[Any], np.ndarray], items: Sequence[Any]) -> PendingFeatures:
    """``run`` over ``items`` started on ``pool``; returns at once. Each result is (1, 512)."""
    return PendingFeatures([pool.submit(run, item) for item in items])


def map_crops(pool: ThreadPoolExecutor, run: Callable[[Any], np.ndarray], items: Sequence[Any]) -> np.ndarray:
    """``run`` over ``items`` on ``pool``, the (1, 512) results stacked in order."""
    return submit_crops(pool, run, items).result()
