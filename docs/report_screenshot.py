"""Make docs/report.png: the evaluate report of the demo's synthetic crops, in headless Chromium.

``python docs/report_screenshot.py`` from the repository root (needs Debian's ``chromium``).
The demo table is synthetic (pipeline/demo.py), so the picture holds no real person.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.demo import write_demo_table  # noqa: E402
from tests.chromium import INSTALL_HINT, find_chromium, screenshot  # noqa: E402


def main() -> int:
    browser = find_chromium()
    if browser is None:
        print(f"no Chromium: {INSTALL_HINT}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        table, out, report = f"{tmp}/demo.csv", f"{tmp}/out", f"{tmp}/report"
        write_demo_table(table, 96)
        for command in (
            ["pipeline", "--input", table, "--output", out],
            ["pipeline.evaluate", "--features", out, "--input", table, "--id_column", "track_id",
             "--camera_column", "camera", "--gallery_queries", "5", "--report", report],
        ):
            subprocess.run([sys.executable, "-m", *command], cwd=REPO_ROOT, check=True)
        target = REPO_ROOT / "docs" / "report.png"
        screenshot(browser, Path(report) / "report.html", target, width=960, height=1240)
    from PIL import Image

    Image.open(target).convert("RGB").quantize(256).save(target, optimize=True)  # a smaller file
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
