"""A local run's bundles: two at a time in threads by default, Beam's flags taken as given.

The CLI test runs ``python -m pipeline`` on the shared real crops (6 MB, which Beam's read cuts
into several ranges, so both threads get rows) by default and with ``--direct_num_workers=1``,
and reads both outputs back: the same rows, pass-through cells exact, features alike.
"""
from __future__ import annotations

import os

import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from pipeline.local_workers import BUNDLE_THREADS, default_bundle_threads
from tests.cli_helpers import cli, manifest
from tests.test_portable_runner import assert_same_outputs

THREADS_LINE = (f"runner: DirectRunner, {BUNDLE_THREADS} bundles at a time in threads of this process "
                f"(--direct_running_mode=multi_threading --direct_num_workers={BUNDLE_THREADS}")


def _direct(args: list[str]) -> tuple[str, int, object]:
    options = PipelineOptions(args)
    said = default_bundle_threads(options, args)
    direct = options.view_as(DirectOptions)
    return direct.direct_running_mode, direct.direct_num_workers, said


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)


def test_a_direct_runner_job_without_worker_flags_runs_bundles_in_threads(two_cores):
    for args in ([], ["--runner=DirectRunner"], ["--runner", "DirectRunner", "--input", "x.csv"]):
        mode, workers, said = _direct(args)
        assert (mode, workers) == ("multi_threading", BUNDLE_THREADS), args
        assert said == f"--direct_running_mode=multi_threading --direct_num_workers={BUNDLE_THREADS}"


@pytest.mark.parametrize("args, expected", [
    (["--direct_num_workers=1"], ("in_memory", 1)),
    (["--direct_num_workers", "1"], ("in_memory", 1)),
    (["--direct_running_mode=in_memory"], ("in_memory", 1)),
    (["--direct_num_workers=4", "--direct_running_mode=multi_processing"], ("multi_processing", 4)),
    (["--direct_running_mode=multi_threading"], ("multi_threading", 1)),  # Beam's own default count
    (["--runner=DataflowRunner"], ("in_memory", 1)),
    (["--runner=PortableRunner", "--environment_type=LOOPBACK"], ("in_memory", 1)),
], ids=["one-worker", "one-worker-spaced", "in-memory", "processes", "threads-count-of-beam", "dataflow", "portable"])
def test_beams_worker_flags_and_other_runners_are_left_as_given(two_cores, args, expected):
    mode, workers, said = _direct(args)
    assert (mode, workers) == expected and said is None


def test_one_core_runs_one_bundle_at_a_time(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert _direct([]) == ("in_memory", 1, None)


def test_cli_default_run_encodes_in_two_threads_the_rows_of_a_one_bundle_run(seed_table, tmp_path):
    default, single = tmp_path / "default", tmp_path / "single"
    ran = cli("--input", str(seed_table), "--output", str(default), "--log_level=info")
    assert ran.returncode == 0, ran.stderr
    assert THREADS_LINE in ran.stderr
    # weights once per worker process: both threads share the one engine
    assert ran.stderr.count("loaded OSNet ") == 1, ran.stderr
    one = cli("--input", str(seed_table), "--output", str(single), "--direct_num_workers=1")
    assert one.returncode == 0, one.stderr
    assert "runner: DirectRunner, one bundle at a time" in one.stderr

    assert_same_outputs(default, single)
    ran_with = manifest(default)
    assert ran_with["counts"] == manifest(single)["counts"]
    assert ran_with["counts"]["rows_read"] == 198
    # each of the two concurrent bundles wrote its own shard; the one bundle of the other run, one
    def shards(output):
        return sorted(p.name for p in output.glob("features-*.parquet"))
    assert len(shards(default)) == BUNDLE_THREADS and len(shards(single)) == 1, (shards(default), shards(single))
