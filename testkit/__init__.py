"""Corpora and reference readers that the tests and the benchmarks share (dev-only: not installed).

Importable from the repository root (pytest and ``python bench/...`` put it on ``sys.path``);
``setup.py`` leaves it out of the package on purpose: workers never need it.
"""
