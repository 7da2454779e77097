"""The console a person sees: few lines by default, a live bar on a terminal, status lines elsewhere."""
from __future__ import annotations

import fcntl
import multiprocessing
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipeline.console import Totals, snapshot, status_line
from pipeline.demo import write_demo_table
from transforms.progress import ProgressWriter, read_progress

REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^osnet-beam: rows_read=52 decoded=48 encoded=48 errors=4 ", re.M)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


@pytest.fixture(scope="module")
def demo_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.csv"
    write_demo_table(str(path))
    return path


@pytest.fixture(scope="module")
def demo_parquet(demo_csv: Path) -> Path:
    path = demo_csv.with_suffix(".parquet")
    table = pacsv.read_csv(demo_csv, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    pq.write_table(table, path)
    return path


def test_status_line_counts_rows_errors_rate_and_time_left():
    totals = Totals(rows=5000)
    state = snapshot({"features": 1150, "errors": 50}, totals, elapsed_s=15.0)
    assert (state.done, state.errors) == (1200, 50)
    assert state.fraction == pytest.approx(0.24)
    assert state.rate == pytest.approx(80.0)
    assert state.eta_s == pytest.approx(15.0 * 0.76 / 0.24)
    assert status_line(state, totals) == "1,200/5,000 rows (24%), 80.0 rows/s, ETA 0:48, errors 50"


def test_status_line_by_bytes_when_rows_are_unknown():
    totals = Totals(bytes=1000)
    state = snapshot({"features": 10, "bytes": 250}, totals, elapsed_s=2.0)
    assert state.fraction == pytest.approx(0.25)
    assert status_line(state, totals).startswith("10 rows (25%), 5.0 rows/s, ETA 0:06")
    unknown = snapshot({"features": 10}, totals, elapsed_s=2.0)
    assert unknown.fraction is None and "ETA ?" in status_line(unknown, totals)


def _count_in_child(directory: str, n: int) -> None:
    writer = ProgressWriter.for_directory(directory)
    for _ in range(n):
        writer.add("features")
    writer.add("errors", 3)
    writer.flush()


def test_progress_of_several_processes_adds_up(tmp_path):
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_count_in_child, args=(str(tmp_path), n)) for n in (100, 250)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert read_progress(str(tmp_path)) == {"features": 350, "errors": 6}


def test_default_console_is_a_few_lines_of_ours(demo_csv, tmp_path):
    done = subprocess.run(
        _cli("--input", str(demo_csv), "--output", str(tmp_path / "out")),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 15, lines
    assert not [line for line in lines if "INFO" in line], lines
    assert SUMMARY.search(done.stdout)
    # Beam's own INFO lines come back when asked for.
    verbose = subprocess.run(
        _cli("--input", str(demo_csv), "--output", str(tmp_path / "verbose"), "--log_level", "info"),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO apache_beam" in verbose.stderr


def _run_in_terminal(args: list[str], timeout: float = 300) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            output += data
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), output.decode(errors="replace")


def test_a_terminal_sees_a_live_bar_with_the_total_from_parquet_footers(demo_parquet, tmp_path):
    status, output = _run_in_terminal(_cli("--input", str(demo_parquet), "--output", str(tmp_path / "out")))
    assert status == 0, output
    frames = [frame for frame in output.split("\r") if "rows/s" in frame]
    assert frames, output
    # The bar redraws in place (carriage returns), knows the total and ends at all 52 rows.
    assert any(re.search(r"\d+%\|.*\| \d+/52 rows \(\d+%\), [\d.]+ rows/s, ETA", f) for f in frames), frames
    assert any("52/52 rows (100%)" in f and "errors 4" in f for f in frames), frames
    assert any(SUMMARY.match(segment) for segment in re.split(r"\r\n|\r|\n", output)), output


def test_without_a_terminal_status_lines_come_every_interval(demo_csv, tmp_path):
    done = subprocess.run(
        _cli(
            "--input", str(demo_csv), "--output", str(tmp_path / "out"), "--progress_interval", "0.5",
            "--direct_num_workers=2", "--direct_running_mode=multi_processing",
        ),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    status = re.findall(r"^osnet-beam: (\d+) rows, [\d.]+ rows/s, ETA \S+, errors (\d+)$", done.stderr, re.M)
    assert len(status) >= 2, done.stderr
    assert "\r" not in done.stderr
    counts = [int(rows) for rows, _ in status]
    assert counts == sorted(counts) and counts[-1] <= 52
    assert SUMMARY.search(done.stdout)


def test_progress_off_prints_no_status(demo_csv, tmp_path):
    done = subprocess.run(
        _cli("--input", str(demo_csv), "--output", str(tmp_path / "out"), "--progress", "off",
             "--progress_interval", "0.2"),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "rows/s" not in done.stderr
    assert SUMMARY.search(done.stdout)


class _RemoteJob:
    """A stand-in for a Dataflow result: running for a few waits, then done."""

    def __init__(self, states):
        self._states = list(states)
        self.waited_ms = []

    def wait_until_finish(self, duration=None):
        self.waited_ms.append(duration)
        return self._states.pop(0)


def test_a_remote_job_gets_status_lines_from_its_metrics_while_the_launcher_waits(caplog):
    from pipeline.console import watch_remote_job

    job = _RemoteJob(["RUNNING", "RUNNING", "JOB_STATE_DONE"])
    counters = iter([{"rows_encoded": 100, "errors_bad_zlib": 2}, {"rows_encoded": 300, "errors_bad_zlib": 5}])
    with caplog.at_level("INFO", logger="osnet-beam"):
        watch_remote_job(job, lambda _result: next(counters), Totals(rows=1000), interval_s=0.25)
    assert job.waited_ms == [250, 250, 250]
    lines = [r.getMessage() for r in caplog.records if r.name == "osnet-beam"]
    assert [line.split(" rows")[0] for line in lines] == ["102/1,000", "305/1,000"], lines
    assert all("errors" in line for line in lines)
