"""DirectRunner with several SDK processes gives the rows of the default (one process) run.

``--direct_num_workers=2 --direct_running_mode=multi_processing`` runs each stage's bundles in
two SDK worker processes. Each process loads its own model unless
``--share_model_across_processes`` is set, in which case one process holds the model and the
other sends it batches (Beam's ``MultiProcessShared``, the same mechanism as on Dataflow). The
input has two CSV shards, so that both processes really get rows to decode and encode.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pipeline import run
from tests.pipeline_helpers import COLUMNS, read_seed_rows, write_csv
from tests.test_portable_runner import assert_same_outputs

REPO_ROOT = Path(__file__).resolve().parents[1]
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
LOADED = "loaded OSNet "  # logged by transforms.inference each time a process builds its engine


@pytest.fixture(scope="module")
def two_shards(seed_table, tmp_path_factory) -> Path:
    """24 real rows and one bad cell, over two CSV files."""
    rows = [[r[c] for c in COLUMNS] for r in read_seed_rows(seed_table)[40:64]]
    folder = tmp_path_factory.mktemp("multiprocess-input")
    write_csv(folder / "part-0.csv", rows[0::2])
    write_csv(folder / "part-1.csv", rows[1::2] + [[9001, -1, "99", "bad/empty.png", ""]])
    return folder


@pytest.fixture(scope="module")
def default_run(two_shards, tmp_path_factory) -> tuple[Path, dict[str, int]]:
    output = tmp_path_factory.mktemp("multiprocess-default") / "out"
    return output, run(["--input", str(two_shards / "*.csv"), "--output", str(output)])


# a model per process (Beam's default) only in the full run: the shared case checks the same rows,
# and test_console.py runs the CLI on two SDK processes, a model each, in the default suite
@pytest.mark.parametrize(
    "extra, loads",
    [pytest.param([], 2, marks=pytest.mark.slow), (["--share_model_across_processes"], 1)],
    ids=["model-per-process", "model-shared-across-processes"],
)
def test_multi_processing_gives_the_default_runs_rows(
    two_shards, default_run, tmp_path, caplog, monkeypatch, extra, loads
):
    caplog.set_level(logging.INFO)
    # the SDK worker processes inherit this environment: make the project importable there
    # whatever directory pytest runs from
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    output = tmp_path / "out"
    counters = run(["--input", str(two_shards / "*.csv"), "--output", str(output), *MULTI_PROCESS, *extra])

    default_output, default_counters = default_run
    assert_same_outputs(output, default_output)
    assert counters == default_counters
    assert counters["rows_encoded"] == 24 and counters["errors_empty_cell"] == 1
    # SDK workers' log lines are relayed to this process: one model build per process that
    # encoded (each got one shard), or a single one when the model is shared
    built = sum(LOADED in record.getMessage() for record in caplog.records)
    assert built == loads, f"{built} model loads, expected {loads}"
