"""A stop (SIGINT/SIGTERM) that Python swallows still stops the job.

The handler raises :class:`pipeline.run.Stopped` in the main thread, between two bytecodes. When
those are inside a ``__del__`` or a weakref callback, Python only prints the exception and goes on
("Exception ignored in ..."): seen in the CLI tests as a job that ran to its end after Ctrl-C.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

SCRIPT = textwrap.dedent('''
    import os, signal, sys, time
    from pipeline.run import Stopped, _quiet_unraisable_stop, _signals_stop_the_job

    sys.unraisablehook = _quiet_unraisable_stop

    class SwallowsTheStop:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, inside __del__: its exception is swallowed

    started = time.monotonic()
    try:
        with _signals_stop_the_job():
            SwallowsTheStop()
            while time.monotonic() - started < WORK_S:
                time.sleep(0.01)
            print("body finished", flush=True)
    except Stopped as stop:
        print(f"stopped by {stop} after {time.monotonic() - started:.1f}s", flush=True)
    else:
        print("not stopped", flush=True)
''')


def _run(work_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.replace("WORK_S", str(work_s))], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_swallowed_stop_is_raised_again_while_the_job_runs():
    done = _run(work_s=20.0)
    lines = done.stdout.split()
    assert done.returncode == 0 and "stopped by SIGINT after" in done.stdout, done.stdout + done.stderr
    assert float(lines[-1].rstrip("s")) < 5.0  # the watchdog's second try, not the end of the work
    assert "body finished" not in done.stdout
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_a_job_that_finishes_after_a_swallowed_stop_still_ends_stopped():
    done = _run(work_s=0.0)
    assert "body finished" in done.stdout and "stopped by SIGINT" in done.stdout, done.stdout + done.stderr
    assert "not stopped" not in done.stdout
