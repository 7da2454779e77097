"""A stop of the launcher (SIGINT / SIGTERM): the job stops, this run's files go, the process ends.

The user asked for three things: the job stops, what this run wrote is removed (never the previous
run's output), and the process ends with 128 + the signal's number and one line. Each can fail:

- *swallowed*: the handler raises :class:`Stopped` between two bytecodes of the main thread,
  wherever it is; inside a ``__del__`` or a weakref callback Python only prints the exception and
  goes on. A watchdog raises the stop again every second until the cleanup has begun, and a job
  that finishes after a stop still ends as stopped.
- *stuck*: the main thread never gets to the cleanup (blocked where no raise reaches it, or in a
  ``finally`` that waits for a thread the stop left waiting). At :data:`STOP_DEADLINE_S` after the
  signal, the watchdog runs the cleanup itself and ends the process.
- *lingering*: after the cleanup, Python's exit joins the runner's worker threads, which the stop
  left mid-bundle and which may never end. A stopped process ends at once (``os._exit``), once its
  streams are flushed: there is nothing left to finish.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

_LOG = logging.getLogger("osnet-beam")

#: How often, and how many times, a stop is raised again while it has not reached the cleanup.
RESTOP_EVERY_S, RESTOP_TRIES = 1.0, 10
#: Seconds from the signal after which the watchdog cleans up and ends the process itself.
STOP_DEADLINE_S = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while the job ran."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(signum: int) -> int:
    """The shell's convention: 128 + the signal's number (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


def stop_message(signum: int) -> str:
    return (f"osnet-beam: stopped by {signal.Signals(signum).name}: this run's temporary files and lock "
            "were removed; the output's previous run (if any) is untouched")


class _State:
    """This process's stop: at most one job is guarded at a time (the CLI runs one)."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.cleanup: Optional[Callable[[], None]] = None
        self.cleaning = threading.Event()  # set once the cleanup has begun: no raise interrupts it
        self.cleaned = threading.Event()
        self.cleanup_lock = threading.Lock()
        self.exit_lock = threading.Lock()

    def reset(self, cleanup: Optional[Callable[[], None]]) -> None:
        self.__init__()
        self.cleanup = cleanup


_STATE = _State()
_OWNS_PROCESS = threading.Event()


def stopped_by() -> Optional[int]:
    """The first stop signal of the guarded job, or None."""
    return _STATE.signals[0] if _STATE.signals else None


def clean_up_once(wait_s: Optional[float] = None) -> bool:
    """Run the guarded job's cleanup, once, whichever thread asks first; a second caller waits for
    it (at most ``wait_s``). False when it did not finish in that time."""
    _STATE.cleaning.set()
    if not _STATE.cleanup_lock.acquire(timeout=-1 if wait_s is None else wait_s):
        return False
    try:
        if not _STATE.cleaned.is_set() and _STATE.cleanup is not None:
            _STATE.cleanup()
    finally:
        _STATE.cleaned.set()
        _STATE.cleanup_lock.release()
    return True


def exit_stopped(signum: int) -> None:
    """Print the stop's one line and end the process now (see *lingering* above)."""
    with _STATE.exit_lock:  # the main thread and the watchdog may both get here: one line, one exit
        print(stop_message(signum), file=sys.stderr, flush=True)
        sys.stdout.flush()
        logging.shutdown()
        os._exit(exit_status(signum))


class StopGuard:
    """``with StopGuard(cleanup):`` the body is the job; a stop or a failure in it runs ``cleanup``
    once, with further signals ignored meanwhile, then re-raises. Main thread only (elsewhere the
    guard only runs the cleanup on a failure: signals reach the main thread alone)."""

    def __init__(self, cleanup: Callable[[], None]):
        self._cleanup = cleanup
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopGuard":
        _STATE.reset(self._cleanup)
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
        return self

    def __exit__(self, kind, error, _traceback) -> bool:
        try:
            if error is None and _STATE.signals:  # the stop was swallowed and the job ran to its end
                clean_up_once()
                raise Stopped(_STATE.signals[0])
            if error is not None:
                clean_up_once()
        finally:
            for each, handler in self._previous.items():
                signal.signal(each, handler)
        return False


def _on_signal(signum: int, _frame) -> None:
    if _STATE.cleaning.is_set():
        return  # cleaning up must not be interrupted again
    if not _STATE.signals:
        threading.Thread(target=_watch, args=(signum,), name="osnet-stop", daemon=True).start()
    _STATE.signals.append(signum)
    raise Stopped(signum)


def _watch(signum: int) -> None:
    """Raise the stop again until the cleanup has begun; in the CLI, end the process at the deadline."""
    deadline = time.monotonic() + STOP_DEADLINE_S
    main = threading.main_thread()
    for _ in range(RESTOP_TRIES):
        if _STATE.cleaning.wait(RESTOP_EVERY_S) or not main.is_alive():
            break
        signal.pthread_kill(main.ident, signum)
    if not _OWNS_PROCESS.is_set():
        return
    if _STATE.cleaned.wait(max(deadline - time.monotonic(), 0.0)):
        main.join(max(deadline - time.monotonic(), 0.0))  # the main thread prints the line and ends it
        exit_stopped(signum)
    _LOG.error("the job did not stop within %.0fs of %s: removing this run's files and ending it now",
               STOP_DEADLINE_S, signal.Signals(signum).name)
    if not clean_up_once(wait_s=STOP_DEADLINE_S):
        _LOG.error("this run's cleanup did not finish either: its temporary files and lock may remain "
                   "(a rerun with --overwrite removes them)")
    exit_stopped(signum)


class QuietStop(logging.Filter):
    """Drops the reports of a requested stop travelling up through the runner's frames.

    The signal raises :class:`Stopped` wherever the main thread is, often inside a DoFn's setup
    or a bundle; Beam logs such an exception with its traceback before passing it on. The stop is
    what the user asked for, and its one line is ``osnet-beam: stopped by SIG...``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _STATE.signals:
            return True
        error = record.exc_info[1] if record.exc_info else None
        while error is not None:
            if isinstance(error, Stopped):
                return False
            error = error.__cause__ or error.__context__
        return f"{Stopped.__module__}.{Stopped.__name__}" not in record.getMessage()


def quiet_unraisable_stop(unraisable) -> None:
    """A stop Python had to swallow (raised in a weakref callback or ``__del__``) is not printed:
    the watchdog raises it again where it can travel."""
    if not isinstance(unraisable.exc_value, Stopped):
        sys.__unraisablehook__(unraisable)


def own_the_process() -> None:
    """For this process's whole life (the CLI's): a stop ends the process (at the latest at the
    deadline), and is reported by its one line only."""
    _OWNS_PROCESS.set()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, QuietStop) for f in handler.filters):  # main() may run again in-process
            handler.addFilter(QuietStop())
    sys.unraisablehook = quiet_unraisable_stop
