"""The ``osnet-beam`` console script: the job, or one of the tools that check its results.

``osnet-beam --input ... --output ...`` runs the job exactly as ``python -m pipeline`` does;
``osnet-beam evaluate ...`` and ``osnet-beam compare ...`` run ``python -m pipeline.evaluate`` and
``python -m pipeline.compare``.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

#: Sub-command -> module with a ``main(argv) -> int``.
TOOLS = {"evaluate": "pipeline.evaluate", "compare": "pipeline.compare"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        import importlib

        tool = importlib.import_module(TOOLS[args[0]])
        return tool.main(args[1:])
    from pipeline.run import main as run_main

    return run_main(args)


def console() -> None:
    """The ``osnet-beam`` console script (setup.py's entry point): :func:`main`, ended through
    :mod:`pipeline.process_exit`."""
    from pipeline.process_exit import run_command

    run_command(main)


if __name__ == "__main__":
    from pipeline.process_exit import run_command

    run_command(main)
