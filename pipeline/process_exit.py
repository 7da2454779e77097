"""How the command lines end: Python's own exit steps, then the process ends without the native
libraries' teardown.

Once a command has printed its last line, Python's exit still runs the C++ static destructors of
pyarrow, torch and gRPC, which race with their own idle thread pools: pyarrow's Parquet threads
now and then abort the process right there ("terminate called without an active exception",
apache/arrow#34314; seen here once in a few hundred CLI runs), turning a finished command's exit
status into -6. Nothing is left to do by then, so the commands wait for their own threads, run
Python's exit handlers (``atexit``: temporary folders, logging, child processes), flush, and end
with ``os._exit``.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import traceback
from typing import Callable, NoReturn

#: Seconds the exit waits, in all, for threads that are not daemons (Python's exit would wait forever).
THREADS_WAIT_S = 10.0


def _status(code: object) -> int:
    """``sys.exit``'s argument as an exit status (None: 0; text: printed, 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _release_idle_pool_workers() -> None:
    """Tell every ``ThreadPoolExecutor``'s workers to end once their work is done, as Python's
    exit does before it joins threads (``concurrent.futures.thread._python_exit``, registered with
    ``threading._register_atexit``), but without its unbounded join. Idle workers (the model's
    network threads, waiting for the next batch) then end at once instead of holding the exit for
    :data:`THREADS_WAIT_S`."""
    from concurrent.futures import thread as pool_threads

    queues = getattr(pool_threads, "_threads_queues", None)
    lock = getattr(pool_threads, "_global_shutdown_lock", None)
    if queues is None or lock is None:  # another Python's internals: the bounded join still ends
        return
    with lock:
        pool_threads._shutdown = True
    for work_queue in list(queues.values()):
        work_queue.put(None)  # the "no more work" a shut-down executor sends each worker


def exit_process(status: int) -> NoReturn:
    """End the process with ``status`` after Python's own exit steps, skipping the native teardown."""
    deadline = time.monotonic() + THREADS_WAIT_S
    _release_idle_pool_workers()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0.0))
    try:
        atexit._run_exitfuncs()  # what interpreter shutdown would run (CPython's own hook)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)


def run_command(main: Callable[[], object]) -> NoReturn:
    """``sys.exit(main())`` for a command line, ending through :func:`exit_process`; an uncaught
    exception prints its traceback and ends with status 1, as Python's exit would."""
    try:
        status = _status(main())
    except SystemExit as stop:  # argparse's usage errors (2), --help (0)
        status = _status(stop.code)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        status = 1
    exit_process(status)
