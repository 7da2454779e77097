"""Imported first by each bench script run as ``python bench/NAME.py``: this folder becomes the
package ``bench`` (not loose top-level modules) and this checkout comes first on ``sys.path``,
whatever copy of the project is installed."""
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == BENCH_DIR:
    sys.path.pop(0)
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))
