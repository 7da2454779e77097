"""A stop (SIGINT/SIGTERM) stops the job, removes this run's files and ends the process, even
where Python would not let it (pipeline/stop.py names the three ways: swallowed, stuck, lingering).

Each case runs a small job body under :class:`pipeline.stop.StopGuard` in a subprocess, as the CLI
does, with the watchdog's timings shortened.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from tests.conftest import REPO_ROOT

PRELUDE = textwrap.dedent('''
    import os, signal, sys, threading, time
    from pipeline import stop
    stop.RESTOP_TRIES, stop.STOP_DEADLINE_S = __TRIES__, __DEADLINE__

    def cleanup():
        print("cleaned up", flush=True)

    class SwallowsTheStop:
        def __del__(self):
            os.kill(os.getpid(), signal.__SIGNAL__)
            time.sleep(0.2)  # the handler runs here, inside __del__: its exception is swallowed

    started = time.monotonic()
''')

SWALLOWED = '''
sys.unraisablehook = stop.quiet_unraisable_stop
try:
    with stop.StopGuard(cleanup):
        SwallowsTheStop()
        while time.monotonic() - started < WORK_S:
            time.sleep(0.01)
        print("body finished", flush=True)
except stop.Stopped as stopped:
    print(f"stopped by {stopped} after {time.monotonic() - started:.1f}s", flush=True)
else:
    print("not stopped", flush=True)
'''

#: The CLI's ending: the process belongs to the stop, which ends it.
AS_THE_CLI = '''
stop.own_the_process()
try:
    with stop.StopGuard(cleanup):
        BODY
except BaseException:
    stop.exit_stopped(stop.stopped_by())
print("returned", flush=True)
'''


def _run(body: str, signal_name: str = "SIGINT", restop_tries: int = 10, deadline_s: float = 30.0,
         work_s: float = 0.0) -> tuple[subprocess.CompletedProcess, float]:
    script = (PRELUDE.replace("__SIGNAL__", signal_name).replace("__TRIES__", str(restop_tries))
              .replace("__DEADLINE__", str(deadline_s)) + body.replace("WORK_S", str(work_s)))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=90)
    return done, time.monotonic() - started


def test_a_swallowed_stop_is_raised_again_while_the_job_runs():
    done, _ = _run(SWALLOWED, work_s=20.0)
    lines = done.stdout.split()
    assert done.returncode == 0 and "stopped by SIGINT after" in done.stdout, done.stdout + done.stderr
    assert float(lines[-1].rstrip("s")) < 5.0  # the watchdog's second try, not the end of the work
    assert "body finished" not in done.stdout and done.stdout.count("cleaned up") == 1
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_a_job_that_finishes_after_a_swallowed_stop_still_ends_stopped():
    done, _ = _run(SWALLOWED, work_s=0.0)
    assert "body finished" in done.stdout and "stopped by SIGINT" in done.stdout, done.stdout + done.stderr
    assert "not stopped" not in done.stdout and done.stdout.count("cleaned up") == 1


def test_a_job_stuck_past_every_raise_is_cleaned_up_and_ended_at_the_deadline():
    """The body catches every stop (as a runner's retry loop might): at the deadline the watchdog
    runs the cleanup itself and ends the process with the stop's status and line."""
    body = AS_THE_CLI.replace("BODY", textwrap.dedent('''
        SwallowsTheStop()
        while True:
            try:
                time.sleep(0.05)
            except stop.Stopped:
                pass
    ''').strip().replace("\n", "\n        "))
    done, took = _run(body, signal_name="SIGTERM", restop_tries=2, deadline_s=4.0)
    assert done.returncode == 143, done.stdout + done.stderr
    assert done.stdout.count("cleaned up") == 1 and "returned" not in done.stdout
    assert "did not stop within 4s of SIGTERM" in done.stderr
    assert done.stderr.count("osnet-beam: stopped by SIGTERM") == 1, done.stderr
    assert took < 30  # the deadline, not the work


def test_a_stopped_job_ends_at_once_though_a_thread_it_left_would_never_end():
    """Python's exit would join a non-daemon thread that waits forever (a worker the stop left
    mid-bundle): the stopped CLI ends at once, with its status and one line."""
    body = AS_THE_CLI.replace("BODY", textwrap.dedent('''
        threading.Thread(target=threading.Event().wait, name="left-behind").start()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    ''').strip().replace("\n", "\n        "))
    done, took = _run(body, signal_name="SIGTERM")
    assert done.returncode == 143, done.stdout + done.stderr
    assert done.stdout.count("cleaned up") == 1 and "returned" not in done.stdout
    assert done.stderr.count("osnet-beam: stopped by SIGTERM") == 1 and "did not stop" not in done.stderr
    assert took < 20, took  # not the 30 s deadline: the main thread ended it


def test_owning_the_process_again_filters_each_handler_once():
    """``main()`` run twice in one process (tests, notebooks) adds the stop filter once a handler."""
    import logging

    from pipeline import stop

    handler, root = logging.StreamHandler(), logging.getLogger()
    root.addHandler(handler)
    try:
        stop.own_the_process()
        stop.own_the_process()
        assert sum(isinstance(f, stop.QuietStop) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)
        sys.unraisablehook = sys.__unraisablehook__
        stop._OWNS_PROCESS.clear()
