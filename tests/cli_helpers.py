"""Running ``python -m pipeline`` as a user does: in a subprocess, from the repository root."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from tests.conftest import REPO_ROOT

CLI_TIMEOUT_S = 240


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` to completion: returncode, stdout, stderr."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, env=cli_env(),
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    """``python -m pipeline ARGS`` in the background, stdout and stderr to ``log``."""
    stream = open(log, "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, env=cli_env(),
        stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def wait_for(condition: Callable[[], bool], process: Optional[subprocess.Popen] = None,
             timeout: float = CLI_TIMEOUT_S, what: str = "condition") -> None:
    """Poll until ``condition()``; fail if ``process`` ended first or the time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def job_started(output: Path) -> Callable[[], bool]:
    """True once Beam's file sinks made their temporary folders: the job is running."""
    return lambda: output.is_dir() and any(p.name.startswith("beam-temp-") for p in output.iterdir())


def manifest(output: Path) -> dict:
    return json.loads((output / "_SUCCESS.json").read_text())


def names(output: Path) -> list[str]:
    return sorted(p.name for p in output.iterdir()) if output.exists() else []
