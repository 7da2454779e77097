"""Entry point of one measurement child: ``python bench/child.py SPEC.json``.

The measuring code (``bench``, ``testkit``) always comes from the checkout this file is in; the
product (``model``, ``transforms``, ``pipeline``, ``weights``) from ``spec["tree"]``, which is
this checkout or a baseline one (``--baseline-rev``). So both trees are measured by the same
code, and the result's ``imported_from`` says which product ran.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURING_ROOT = str(HERE.parent)


def _arrange_path(tree: str) -> None:
    """Import this checkout's measuring packages, then put ``tree`` first for everything else."""
    if sys.path and Path(sys.path[0]).resolve() == HERE:
        sys.path.pop(0)  # run as a script: this folder is the package ``bench``, not loose modules
    sys.path.insert(0, MEASURING_ROOT)
    for package in ("bench", "testkit"):  # pinned in sys.modules: their modules load from this checkout
        importlib.import_module(package)

    sys.path.remove(MEASURING_ROOT)
    while tree in sys.path:
        sys.path.remove(tree)
    sys.path.insert(0, tree)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    _arrange_path(str(Path(spec["tree"]).resolve()))
    from bench.harness import RESULT_MARKER
    from bench.measure import CHILDREN

    result = CHILDREN[spec["kind"]](spec)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
