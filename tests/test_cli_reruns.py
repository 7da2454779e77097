"""Runs into one output directory, through ``python -m pipeline`` as a user runs them.

Reruns (refused; replaced with --overwrite, with another shard count), a rerun killed part-way
(SIGKILL: the previous output stays whole), two runs at once (the second refused, the first
whole), SIGINT / SIGTERM (one line, 130 / 143, no temporary files), and --max_error_fraction.
Rows are read back with README's recipes: ``pipeline.read_features`` and the manifest.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import read_errors, read_features
from tests.cli_helpers import cli, job_started, manifest, names, start_cli, wait_for
from tests.pipeline_helpers import COLUMNS, read_seed_rows, write_csv

ROWS = 24


@pytest.fixture(scope="module")
def tables(seed_table, tmp_path_factory) -> dict[str, Path]:
    seed = read_seed_rows(seed_table)
    folder = tmp_path_factory.mktemp("rerun-input")
    rows = [[r[c] for c in COLUMNS] for r in seed[:ROWS]]
    write_csv(folder / "small.csv", rows + [[9000, -1, "99", "bad/empty.png", ""]])
    # a longer job, so that a signal surely lands while it runs
    write_csv(folder / "long.csv", [[r[c] for c in COLUMNS] for r in seed[:60]])
    # long enough (with the x1.0 network, one thread, one crop a call) to outlast another run's planning
    write_csv(folder / "longer.csv", [[k * 1000 + r["frame"], r["track_id"], r["camera"], f"{r['file']}#{k}",
                                       r["feature_vector"]] for k in range(2) for r in seed])
    write_csv(folder / "all_bad.csv", [[i, -1, "99", f"bad/{i}.png", "not a crop"] for i in range(6)])
    write_csv(folder / "mixed.csv", rows[:9] + [[9001, -1, "99", "bad/x.png", "{'width': 1}"]])
    return {p.stem: p for p in folder.iterdir()}


def readme_recipe(output: Path):
    """README's reading recipe without the project: the manifest names the run's shards."""
    run = json.loads((output / "_SUCCESS.json").read_text())
    return pq.read_table([str(output / s["name"]) for s in run["features"]["shards"]])


def assert_one_run(output: Path, expected_files: set[str], run_id: str | None = None) -> dict:
    """The output holds exactly one whole run: every input row once, features + errors."""
    run = manifest(output)
    if run_id:
        assert run["run_id"] == run_id
    table = read_features(str(output))
    assert sorted(table.column("file").to_pylist()) == sorted(expected_files)
    if run["features"]["format"] == "parquet":
        assert sorted(readme_recipe(output).column("file").to_pylist()) == sorted(expected_files)
    errors = read_errors(str(output))
    assert run["counts"]["rows_read"] == table.num_rows + len(errors)
    assert sum(s["rows"] for s in run["features"]["shards"]) == table.num_rows
    listed = {s["name"] for s in run["features"]["shards"] + run["errors"]["shards"]}
    assert listed <= set(names(output))
    return run


def test_rerun_refused_then_replaced_with_overwrite_and_a_killed_rerun_keeps_the_output(tmp_path, tables, seed_table):
    small = str(tables["small"])
    out = tmp_path / "out"
    expected = {r["file"] for r in read_seed_rows(seed_table)[:ROWS]}

    first = cli("--input", small, "--output", str(out), "--num_shards", "3")
    assert first.returncode == 0, first.stderr
    run1 = assert_one_run(out, expected)
    assert len(run1["features"]["shards"]) == 3 and run1["counts"]["errors_by_reason"] == {"empty_cell": 1}
    assert run1["model"]["weights_sha256"] and run1["input"]["files"][0]["size"] == Path(small).stat().st_size
    assert names(out) == sorted(["_SUCCESS.json", *(s["name"] for s in run1["features"]["shards"] + run1["errors"]["shards"])])

    again = cli("--input", small, "--output", str(out), "--num_shards", "2")
    assert again.returncode == 2
    assert f"already holds the output of run {run1['run_id']}" in again.stderr and "--overwrite" in again.stderr
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert_one_run(out, expected, run1["run_id"])  # untouched

    replaced = cli("--input", small, "--output", str(out), "--num_shards", "2", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    run2 = assert_one_run(out, expected)
    assert run2["run_id"] != run1["run_id"] and len(run2["features"]["shards"]) == 2
    assert not any(run1["run_id"] in name for name in names(out))  # the old run's shards are gone

    # a rerun killed part-way (SIGKILL: nothing can clean up) leaves the previous output whole
    killed = start_cli("--input", str(tables["long"]), "--output", str(out), "--overwrite", "--batch_size", "2",
                       log=tmp_path / "killed.log")
    try:
        wait_for(job_started(out), killed, what="the job to start")
    finally:
        killed.kill()
        killed.wait(30)
    assert_one_run(out, expected, run2["run_id"])
    assert "_LOCK.json" in names(out)
    # its lock is stale (its process is gone): refused without --overwrite, taken over with it
    refused = cli("--input", small, "--output", str(out))
    assert refused.returncode == 2 and "stopped without finishing" in refused.stderr, refused.stderr
    csv_run = cli("--input", small, "--output", str(out), "--overwrite", "--output_format", "csv")
    assert csv_run.returncode == 0, csv_run.stderr
    run3 = assert_one_run(out, expected)
    assert run3["features"]["format"] == "csv"
    assert not any(n.startswith("beam-temp-") or n == "_LOCK.json" for n in names(out))
    assert not any(run2["run_id"] in n for n in names(out))
    # CSV features come back as list<float32>, as from Parquet
    table = read_features(str(out))
    assert table.schema.field("feature_vector").type.value_type.bit_width == 32
    assert len(table.column("feature_vector")[0].as_py()) == 512


def test_two_runs_at_once_the_second_is_refused_and_the_first_is_whole(tmp_path, tables, seed_table, shared_weights_dir):
    out = tmp_path / "out"
    # one crop per model call on one thread: the first run is still writing when the second plans
    weights = str(shared_weights_dir / "osnet_x1_0_market1501_from_int8.pth")
    first = start_cli("--input", str(tables["longer"]), "--output", str(out), "--batch_size", "1", "--threads", "1",
                      "--weights", weights, log=tmp_path / "first.log")
    try:
        wait_for(lambda: (out / "_LOCK.json").exists(), first, what="the first run's lock")
        second = cli("--input", str(tables["small"]), "--output", str(out), "--overwrite")
        assert first.poll() is None, "the first run ended before the second planned: the test proves nothing"
        assert second.returncode == 2
        assert "another run is writing here" in second.stderr and "_LOCK.json" in second.stderr, second.stderr
        assert first.wait(240) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    expected = [f"{r['file']}#{k}" for k in range(2) for r in read_seed_rows(seed_table)]
    table = read_features(str(out))
    assert sorted(table.column("file").to_pylist()) == sorted(expected)
    assert "_LOCK.json" not in names(out)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_cleanly_removing_temporary_files(tmp_path, tables, signum, status):
    out = tmp_path / "out"
    log = tmp_path / "run.log"
    process = start_cli("--input", str(tables["long"]), "--output", str(out), "--batch_size", "2", log=log)
    try:
        wait_for(job_started(out), process, what="the job to start")
        process.send_signal(signum)
        assert process.wait(60) == status, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert f"osnet-beam: stopped by {signal.Signals(signum).name}" in text
    assert names(out) == []  # no beam-temp-*, no lock, no shard: the folder it made is gone too


def test_max_error_fraction_fails_a_run_that_produced_nothing_useful(tmp_path, tables):
    out = tmp_path / "all_bad"
    done = cli("--input", str(tables["all_bad"]), "--output", str(out))
    assert done.returncode == 3, done.stderr
    assert "every row failed (6 of 6 are errors)" in done.stderr
    summary = [line for line in done.stdout.splitlines() if line.startswith("osnet-beam: rows_read=")]
    assert summary and "rows_read=6 decoded=0 encoded=0 errors=6 (malformed_literal=6)" in summary[0]
    assert "FAILED: every row failed" in summary[0]
    run = manifest(out)
    assert run["error_limit_exceeded"].startswith("every row failed") and run["error_fraction"] == 1.0
    assert len(read_errors(str(out))) == 6 and read_features(str(out)).num_rows == 0

    out = tmp_path / "mixed"
    done = cli("--input", str(tables["mixed"]), "--output", str(out), "--max_error_fraction", "0.05")
    assert done.returncode == 3, done.stderr
    assert "10.00% of the rows are errors (1 of 10), over --max_error_fraction 0.05" in done.stderr
    assert manifest(out)["max_error_fraction"] == 0.05
    assert read_features(str(out)).num_rows == 9


def test_csv_output_reads_back_with_its_nulls_as_the_parquet_output_does(tmp_path, seed_table):
    """A null in a typed pass-through column (an empty CSV field) is written as "" in CSV output;
    read_features gives it back as null, as the Parquet output of the same input has it."""
    seed = read_seed_rows(seed_table)[:4]
    rows = [[r[c] for c in COLUMNS] for r in seed]
    rows[1][1] = None  # track_id: an empty field in an int column
    rows[2][2] = ""  # camera: the empty string in a text column
    table = tmp_path / "nulls.csv"
    write_csv(table, rows)
    for fmt in ("csv", "parquet"):
        done = cli("--input", str(table), "--output", str(tmp_path / fmt), "--output_format", fmt)
        assert done.returncode == 0, done.stderr
    from_csv, from_parquet = read_features(str(tmp_path / "csv")), read_features(str(tmp_path / "parquet"))
    assert from_csv.schema == from_parquet.schema
    by_file = {r["file"]: r for r in from_parquet.to_pylist()}
    for row in from_csv.to_pylist():
        want = by_file[row["file"]]
        assert [row[c] for c in COLUMNS[:-1]] == [want[c] for c in COLUMNS[:-1]]
    assert by_file[seed[1]["file"]]["track_id"] is None and by_file[seed[2]["file"]]["camera"] == ""
