"""Headless Chromium for the report tests and the README screenshot (Debian's ``chromium``)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get update && apt-get install -y chromium"


def find_chromium() -> Optional[str]:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, url: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """One headless run with a fresh profile, flags that work as root and offline."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", f"--user-data-dir={profile}",
                   "--hide-scrollbars", "--virtual-time-budget=10000", *extra, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def dump_dom(browser: str, page: Path) -> str:
    """The page's DOM after its load handlers ran."""
    done = _run(browser, page.resolve().as_uri(), "--dump-dom")
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(browser: str, page: Path, png: Path, width: int = 1100, height: int = 1500) -> Path:
    done = _run(browser, page.resolve().as_uri(), f"--window-size={width},{height}",
                f"--screenshot={png}")
    if done.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium screenshot failed ({done.returncode}): {done.stderr[-2000:]}")
    return png
