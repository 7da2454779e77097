"""The command lines end through pipeline.process_exit: Python's exit steps run (threads waited for,
atexit handlers, flushed output), the status is the command's, the native teardown is skipped."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO_ROOT

SCRIPT = textwrap.dedent('''
    import atexit, sys, threading, time
    from pipeline.process_exit import run_command

    def main():
        atexit.register(lambda: print("atexit ran", flush=True))
        threading.Thread(target=lambda: (time.sleep(0.5), print("thread finished"))).start()
        print("unflushed line", end="")
        BODY

    run_command(main)
''')


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.replace("BODY", body)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_status_is_the_commands_and_pythons_exit_steps_run():
    done = _run("return 3")
    assert done.returncode == 3, done.stderr
    assert "thread finished" in done.stdout and "atexit ran" in done.stdout and "unflushed line" in done.stdout


def test_sys_exit_and_an_uncaught_exception_end_as_python_would():
    assert _run("sys.exit(2)").returncode == 2
    assert _run("sys.exit()").returncode == 0
    failed = _run("raise RuntimeError('boom')")
    assert failed.returncode == 1 and "Traceback" in failed.stderr and "RuntimeError: boom" in failed.stderr
    assert "atexit ran" in failed.stdout


def test_the_console_script_and_python_m_end_through_it():
    for module in ("pipeline", "pipeline.evaluate", "pipeline.compare"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (module, done.stderr)
    setup = (REPO_ROOT / "setup.py").read_text()
    assert "osnet-beam=pipeline.cli:console" in setup
    script = Path(sys.executable).parent / "osnet-beam"  # the console script run_local.sh installs
    assert script.exists(), f"{script}: install the project (./run_local.sh --setup-only)"
    for args in (["--help"], ["evaluate", "--help"]):
        done = subprocess.run([str(script), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (args, done.stderr)
    refused = subprocess.run([str(script), "--input", str(REPO_ROOT / "no-such-*.csv"), "--output", "unused"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("osnet-beam: error:"), refused.stderr


def test_idle_thread_pools_do_not_hold_the_exit_and_their_last_work_finishes():
    """A ThreadPoolExecutor left open (as the model's network threads are) ends with the command at
    once, as under Python's own exit; a task still running is waited for."""
    done = _run(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "    idle = ThreadPoolExecutor(2); idle.submit(lambda: None).result()\n"
        "    busy = ThreadPoolExecutor(1); busy.submit(lambda: (time.sleep(1), print('task finished', flush=True)))\n"
        "    globals().update(started=time.monotonic(), pools=(idle, busy))\n"  # held, as the engine cache holds its pool
        "    atexit.register(lambda: print(f'exit after {time.monotonic() - started:.1f} s', flush=True))\n"
        "    return 0"
    )
    assert done.returncode == 0, done.stderr
    assert "task finished" in done.stdout and "thread finished" in done.stdout, done.stdout
    waited = float(done.stdout.split("exit after ")[1].split(" s")[0])
    assert waited < 5, done.stdout  # the task's 1 s, not the 10 s bound on waiting for threads
