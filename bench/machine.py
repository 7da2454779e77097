"""Where the benchmark runs: the repository, the reference material, the machine, the revision."""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results"


def find_shared(requested: Optional[str]) -> Optional[Path]:
    """--shared PATH, else $OSNET_SHARED_DIR, else ../shared next to the repository; None if absent."""
    candidates = [requested] if requested else [os.environ.get("OSNET_SHARED_DIR"), str(REPO_ROOT.parent / "shared")]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None



def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(git("status", "--porcelain").splitlines())}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        flags = next((text for text in Path("/proc/cpuinfo").read_text().splitlines() if text.startswith("flags")), "")
        info["avx2"] = " avx2" in flags
        info["avx512f"] = " avx512f" in flags
    with contextlib.suppress(Exception):
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    for package in ("torch", "onnxruntime", "apache_beam", "numpy", "PIL", "pyarrow"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            name = {"PIL": "pillow", "apache_beam": "apache-beam"}.get(package, package)
            info[f"{package}_version"] = version(name)
    return info

