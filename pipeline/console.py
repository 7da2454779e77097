"""What a person running the job sees: our own few lines, a live progress bar, quiet libraries.

By default only the ``osnet-beam`` logger speaks at INFO; Beam and other libraries speak from
WARNING up (``--log_level info`` brings their INFO lines back), less a short list of warnings
that Beam's local runners print on every run and that ask nothing of the user.

Progress: on runners whose workers share this machine, the workers count rows into a folder
(:mod:`transforms.progress`) and a thread here draws a bar (tqdm) when stderr is a terminal, or
writes a status line every ``interval_s`` seconds when it is not (CI, log files). On remote runners
:func:`watch_remote_job` prints the same status line from the job's metrics while it runs.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, TextIO

from apache_beam.runners.runner import PipelineState
from tqdm import tqdm

from transforms import USER_LOG, metrics
from transforms.progress import read_progress

LOGGER_NAME = USER_LOG.name
LOG_LEVELS = ("debug", "info", "warning", "error")
PROGRESS_MODES = ("auto", "bar", "lines", "off")
#: Seconds between two status lines when stderr is not a terminal.
DEFAULT_INTERVAL_S = 30.0
#: How often the bar redraws (it reads a few small files each time).
_BAR_POLL_S = 0.25
_BAR_STEPS = 1000
_BAR_WITH_SHARE = "{percentage:3.0f}%|{bar}| {desc}"
_BAR_COUNT_ONLY = "{desc}"

# Warnings Beam's local runners print on every run; none asks anything of the user.
_NOISE = (
    "Resource module is not available",  # worker memory stats, not on this platform
    "No semi_persistent_directory",  # portable workers' scratch folder, unused here
    "Discarding unparseable args",  # workers re-parse the launcher's flags without our options
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


class _ConsoleHandler(logging.StreamHandler):
    """Writes above a live bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never break the job
            self.handleError(record)


def configure_logging(level: str = "warning", stream: Optional[TextIO] = None) -> None:
    """Our lines at INFO as ``osnet-beam: ...``; everything else from ``level`` up."""
    stream = stream or sys.stderr
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    library = _ConsoleHandler(stream)
    library.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if level.lower() != "debug":
        library.addFilter(_DropNoise())
    root.addHandler(library)
    root.setLevel(level.upper())
    ours = logging.getLogger(LOGGER_NAME)
    for handler in list(ours.handlers):
        ours.removeHandler(handler)
    mine = _ConsoleHandler(stream)
    mine.setFormatter(logging.Formatter(f"{LOGGER_NAME}: %(message)s"))
    ours.addHandler(mine)
    ours.setLevel(min(logging.INFO, root.level))
    ours.propagate = False


@dataclass(frozen=True)
class Totals:
    """What the job will read, as known at planning: rows (Parquet footers) or bytes (CSV)."""

    rows: Optional[int] = None
    bytes: Optional[int] = None


@dataclass(frozen=True)
class Snapshot:
    """Progress at one moment."""

    done: int
    errors: int
    fraction: Optional[float]
    rate: float
    eta_s: Optional[float]


def snapshot(counts: dict[str, int], totals: Totals, elapsed_s: float, done_before: int = 0) -> Snapshot:
    """Rows done, errors so far, fraction of the input, rows/s and the time left.

    ``elapsed_s`` is the time since ``done_before`` rows were done (rates leave start-up out).
    """
    errors = counts.get("errors", 0)
    done = counts.get("features", 0) + errors
    fraction = None
    if totals.rows:
        fraction = min(done / totals.rows, 1.0)
    elif totals.bytes and "bytes" in counts:
        fraction = min(counts["bytes"] / totals.bytes, 1.0)
    rate = (done - done_before) / elapsed_s if elapsed_s > 0 else 0.0
    eta = None
    if fraction is not None and 0 < fraction < 1 and rate > 0:
        eta = (1 - fraction) * done / fraction / rate
    return Snapshot(done, errors, fraction, rate, eta)


def _clock(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def status_line(state: Snapshot, totals: Totals) -> str:
    """``1,200/5,000 rows (24%), 80.1 rows/s, ETA 0:47, errors 3``."""
    of = f"/{totals.rows:,}" if totals.rows else ""
    share = f" ({state.fraction:.0%})" if state.fraction is not None else ""
    return (
        f"{state.done:,}{of} rows{share}, {state.rate:.1f} rows/s, "
        f"ETA {_clock(state.eta_s)}, errors {state.errors:,}"
    )


def pick_mode(requested: str, stream: TextIO) -> str:
    """``bar`` on a terminal, ``lines`` elsewhere, unless asked for one or ``off``."""
    if requested != "auto":
        return requested
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


class LocalProgress:
    """Shows the progress the workers write into a temporary folder, until :meth:`close`.

    Use as a context manager around the run; :attr:`directory` goes to the job's graph.
    """

    def __init__(
        self,
        totals: Totals,
        mode: str = "auto",
        interval_s: float = DEFAULT_INTERVAL_S,
        stream: Optional[TextIO] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._stream = stream or sys.stderr
        self._mode = pick_mode(mode, self._stream)
        self._totals = totals
        self._interval_s = interval_s
        self._clock = clock
        self.directory = tempfile.mkdtemp(prefix="osnet-beam-progress-")
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._bar: Optional[tqdm] = None
        self._first_seen: Optional[tuple[float, int]] = None

    def __enter__(self) -> "LocalProgress":
        if self._mode == "bar":
            self._bar = tqdm(
                total=_BAR_STEPS, file=self._stream, dynamic_ncols=True, leave=False,
                bar_format=_BAR_COUNT_ONLY,
            )
        if self._mode != "off":
            self._thread = threading.Thread(target=self._watch, name="osnet-progress", daemon=True)
            self._thread.start()
        return self

    def _show(self) -> None:
        counts = read_progress(self.directory)
        now = self._clock()
        if self._first_seen is None and counts:
            # Rates count from the first rows seen, not from start-up (imports, model load).
            self._first_seen = (now, counts.get("features", 0) + counts.get("errors", 0))
        since, before = (now - self._first_seen[0], self._first_seen[1]) if self._first_seen else (0.0, 0)
        state = snapshot(counts, self._totals, since, before)
        if self._bar is not None:
            if state.fraction is not None:
                self._bar.bar_format = _BAR_WITH_SHARE
                self._bar.n = int(state.fraction * _BAR_STEPS)
            self._bar.set_description_str(status_line(state, self._totals), refresh=False)
            self._bar.refresh()
        else:
            logging.getLogger(LOGGER_NAME).info("%s", status_line(state, self._totals))

    def _watch(self) -> None:
        wait = _BAR_POLL_S if self._bar is not None else self._interval_s
        while not self._stop.wait(wait):
            self._show()

    def close(self) -> None:
        """Stops the display and removes the folder; safe to call more than once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._show()  # the last frame shows every row written
            self._bar.close()
            self._bar = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __exit__(self, *exc_info) -> None:
        self.close()


def watch_remote_job(
    result,
    counters: Callable[[object], dict[str, int]],
    totals: Totals,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> None:
    """Wait for a remote job, logging a status line from its metrics every ``interval_s``."""
    log = logging.getLogger(LOGGER_NAME)
    started = time.monotonic()
    while True:
        state = result.wait_until_finish(duration=int(interval_s * 1000))
        if state is not None and PipelineState.is_terminal(str(state).split(".")[-1].replace("JOB_STATE_", "")):
            return
        try:
            job = counters(result)
        except Exception:  # metrics may not be ready yet
            continue
        counts = {"features": job.get(metrics.ROWS_ENCODED, 0), "errors": metrics.error_total(job)}
        log.info("%s", status_line(snapshot(counts, totals, time.monotonic() - started), totals))
