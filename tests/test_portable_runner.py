"""The job on Beam's portable path: PortableRunner -> a job service -> an EXTERNAL SDK worker pool.

This is the path Flink (and every other portable runner) takes: the launcher only submits the
pipeline proto; the job service runs it and asks the worker pool for SDK harnesses, which import
the project themselves. Both services are separate processes started here on loopback ports and
always stopped at the end. The rows must equal the DirectRunner's on the same small table.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import run
from tests.pipeline_helpers import COLUMNS, read_errors, read_parquet_features, read_seed_rows, write_csv

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60
JOB_TIMEOUT_S = 150
BROKEN_RECORD = '7,7,"01","broken.png","{\'width\': 48, \'image\': \'789c\n'
BAD_ROWS = [
    [9001, -1, "99", "bad/empty.png", ""],
    [9002, -1, "99", "bad/not_a_dict.png", "[1, 2, 3]"],
]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (the services bind them a moment later)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def service_env() -> dict[str, str]:
    """Environment for the services and their SDK workers: the project importable, this Python.

    worker_pool_main starts each SDK harness as a bare ``python -c ...``, so this interpreter's
    directory goes first on PATH, and the repository root on PYTHONPATH.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), env.get("PATH", "")))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Service:
    """A Beam service in its own process group (its SDK workers included), logging to a file."""

    def __init__(self, name: str, args: list[str], port: int, log_dir: Path):
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (open while the service runs)
        self.process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env=service_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} log (last {lines} lines) ---\n" + "\n".join(text[-lines:])

    def wait_listening(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}\n{self.log_tail()}")
            try:
                with socket.create_connection(("localhost", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} not listening on port {self.port} after {timeout}s\n{self.log_tail()}")

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:  # the group is already empty
            pass

    def stop(self) -> None:
        """SIGTERM to the whole group, then SIGKILL to whatever is left (SDK workers included)."""
        try:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=10)
        finally:
            self._log.close()


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
    """A job service and an EXTERNAL worker pool, each its own process, reached on localhost.

    (Beam's servers bind every interface of the machine, which no flag changes; the job, the
    pool and their workers only ever talk to each other through localhost.)
    """
    log_dir = tmp_path_factory.mktemp("portable-services")
    services = []
    try:
        job_port, pool_port = free_ports(2)
        services.append(Service(
            "job_service",
            ["apache_beam.runners.portability.local_job_service_main", "--port", str(job_port),
             "--staging_dir", str(log_dir / "staging")],
            job_port, log_dir,
        ))
        services.append(Service(
            "worker_pool",
            ["apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port)],
            pool_port, log_dir,
        ))
        for service in services:
            service.wait_listening()
        yield {"job_endpoint": f"localhost:{job_port}", "worker_pool": f"localhost:{pool_port}",
               "services": services}
    finally:
        for service in reversed(services):
            service.stop()


def run_with_timeout(argv: list[str], timeout: float, services: list[Service]) -> dict[str, int]:
    """``run(argv)`` in a daemon thread: a job that hangs fails the test instead of the session."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["counters"] = run(argv)
        except Exception as error:  # noqa: BLE001 (re-raised below, with the services' logs)
            outcome["error"] = error

    thread = threading.Thread(target=target, name="portable-job", daemon=True)
    thread.start()
    thread.join(timeout)
    logs = "\n".join(s.log_tail() for s in services)
    if thread.is_alive():
        pytest.fail(f"portable job still running after {timeout}s\n{logs}")
    if "error" in outcome:
        raise AssertionError(f"portable job failed: {outcome['error']!r}\n{logs}") from outcome["error"]
    return outcome["counters"]


@pytest.fixture(scope="module")
def small_table(seed_table, tmp_path_factory) -> Path:
    """40 real rows, two bad cells and one broken CSV record."""
    rows = [[r[c] for c in COLUMNS] for r in read_seed_rows(seed_table)[:40]]
    rows.insert(5, BAD_ROWS[0])
    rows.insert(21, BAD_ROWS[1])
    path = tmp_path_factory.mktemp("portable-input") / "table.csv"
    write_csv(path, rows, raw_lines={30: BROKEN_RECORD})
    return path


def rows_by_file(output_dir: Path) -> tuple[object, dict[str, dict]]:
    table = read_parquet_features(output_dir)
    rows = {row["file"]: row for row in table.to_pylist()}
    assert len(rows) == table.num_rows, "a file name appears twice in the output"
    return table.schema, rows


def assert_same_outputs(actual_dir: Path, expected_dir: Path) -> None:
    """Same schema, same rows: pass-through cells exactly, features to float32 round-off."""
    actual_schema, actual = rows_by_file(actual_dir)
    expected_schema, expected = rows_by_file(expected_dir)
    assert actual_schema == expected_schema
    assert set(actual) == set(expected)
    for name, row in actual.items():
        want = expected[name]
        for column in COLUMNS[:-1]:
            assert row[column] == want[column] and type(row[column]) is type(want[column]), (name, column)
        np.testing.assert_allclose(
            np.asarray(row["feature_vector"], np.float32),
            np.asarray(want["feature_vector"], np.float32),
            rtol=1e-6, atol=1e-5, err_msg=name,
        )
    assert sorted(read_errors(actual_dir), key=_error_key) == sorted(read_errors(expected_dir), key=_error_key)


def _error_key(error: dict) -> tuple:
    return error["reason"], error.get("source", ""), str(error.get("row", error.get("raw_line")))


def test_portable_runner_with_external_worker_pool_matches_direct_runner(
    small_table, portable_services, tmp_path
):
    direct = run(["--input", str(small_table), "--output", str(tmp_path / "direct")])
    portable = run_with_timeout(
        [
            "--input", str(small_table),
            "--output", str(tmp_path / "portable"),
            "--runner=PortableRunner",
            f"--job_endpoint={portable_services['job_endpoint']}",
            "--environment_type=EXTERNAL",
            f"--environment_config={portable_services['worker_pool']}",
        ],
        JOB_TIMEOUT_S,
        portable_services["services"],
    )

    assert_same_outputs(tmp_path / "portable", tmp_path / "direct")
    assert portable == direct  # counters travel back through the job service's metrics
    assert direct["rows_read"] == 43 and direct["rows_encoded"] == 40
    reasons = sorted(e["reason"] for e in read_errors(tmp_path / "portable"))
    assert reasons == ["bad_csv_record", "empty_cell", "malformed_literal"]
    # the work really ran in an SDK harness that the pool started, not in this process
    pool_log = portable_services["services"][1].log_path.read_text(errors="replace")
    assert "Starting worker with command" in pool_log


def test_no_wait_returns_at_once_and_the_job_writes_its_manifest(small_table, portable_services, tmp_path):
    """``--no_wait`` through the CLI: the launcher prints the job id and exits; the job goes on in
    the job service and, as its last step, writes the manifest and removes the lock."""
    from pipeline import read_errors as manifest_errors
    from pipeline import read_features
    from tests.cli_helpers import cli, wait_for

    out = tmp_path / "out"
    done = cli(
        "--input", str(small_table), "--output", str(out), "--runner=PortableRunner",
        f"--job_endpoint={portable_services['job_endpoint']}", "--environment_type=EXTERNAL",
        f"--environment_config={portable_services['worker_pool']}", "--no_wait",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = [text for text in done.stdout.splitlines() if text.startswith("osnet-beam: submitted to PortableRunner: job ")]
    assert line and "not waiting" in line[0], done.stdout
    wait_for(lambda: (out / "_SUCCESS.json").exists(), timeout=JOB_TIMEOUT_S, what="the job's manifest")
    assert read_features(str(out)).num_rows == 40 and len(manifest_errors(str(out))) == 3
    wait_for(lambda: not (out / "_LOCK.json").exists(), timeout=30, what="the lock to go")


def _portable_args(portable_services) -> list[str]:
    return [
        "--runner=PortableRunner",
        f"--job_endpoint={portable_services['job_endpoint']}",
        "--environment_type=EXTERNAL",
        f"--environment_config={portable_services['worker_pool']}",
    ]


# slow: the portable path itself is the first test's; these input paths are the DirectRunner's
# (test_csv_split.py, test_parquet_source.py) and need only the full run
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gzip_csv", "single_row_group_parquet"])
def test_portable_runner_reads_gzip_csv_and_one_row_group_parquet_as_the_direct_runner(
    kind, small_table, seed_table, portable_services, tmp_path
):
    """The other input paths (a compressed CSV read whole and redistributed; Parquet split by row
    range) through the job service and an external worker pool: the DirectRunner's rows."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    direct = run(["--input", str(small_table), "--output", str(tmp_path / "direct")])
    if kind == "gzip_csv":
        source = tmp_path / "table.csv.gz"
        source.write_bytes(gzip.compress(small_table.read_bytes()))
    else:  # the same rows as Parquet in ONE row group (the CSV's broken record has no Parquet form)
        rows = [r for r in read_parquet_features(tmp_path / "direct").to_pylist()]
        table = pa.Table.from_pylist(
            [{c: r[c] for c in COLUMNS[:-1]} for r in rows], schema=pa.schema(
                [("frame", pa.int64()), ("track_id", pa.int64()), ("camera", pa.string()), ("file", pa.string())]))
        by_file = {r["file"]: r for r in read_seed_rows(seed_table)}
        table = table.append_column("feature_vector", pa.array([by_file[f]["feature_vector"] for f in table["file"].to_pylist()]))
        source = tmp_path / "table.parquet"
        pq.write_table(table, source, row_group_size=table.num_rows)
    portable = run_with_timeout(
        ["--input", str(source), "--output", str(tmp_path / "portable"), *_portable_args(portable_services)],
        JOB_TIMEOUT_S, portable_services["services"],
    )
    _, got = rows_by_file(tmp_path / "portable")
    _, want = rows_by_file(tmp_path / "direct")
    assert set(got) == set(want)
    for name, row in got.items():
        assert [row[c] for c in COLUMNS[:-1]] == [want[name][c] for c in COLUMNS[:-1]], name
        np.testing.assert_allclose(np.asarray(row["feature_vector"], np.float32),
                                   np.asarray(want[name]["feature_vector"], np.float32), rtol=1e-6, atol=1e-5)
    assert portable["rows_encoded"] == direct["rows_encoded"] == 40
    reasons = sorted(e["reason"] for e in read_errors(tmp_path / "portable"))
    if kind == "gzip_csv":
        assert portable == direct
        assert reasons == ["bad_csv_record", "empty_cell", "malformed_literal"]
    else:
        assert portable["rows_read"] == 40 + len(reasons) and reasons == []

