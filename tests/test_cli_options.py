"""Flags, values and paths checked before the job starts, through ``python -m pipeline``.

Every refusal: exit status 2, one line naming the flag or path, no traceback, and nothing left
behind (the output directory is not created). Beam's own flags of every runner keep working, a
Dataflow dry run says what it would submit, and paths with ``~`` or ``[`` do what a user means.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model.policy import cpu_supports_bf16

from pipeline import read_features
from pipeline.run import main
from tests.cli_helpers import cli, cli_env, manifest
from tests.conftest import REPO_ROOT
from tests.pipeline_helpers import COLUMNS, read_seed_rows, write_csv


@pytest.fixture(scope="module")
def table(seed_table, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("options-input") / "table.csv"
    write_csv(path, [[r[c] for c in COLUMNS] for r in read_seed_rows(seed_table)[:6]])
    return path


def _paths(tmp: Path) -> dict[str, Path]:
    (tmp / "a_file").write_text("x")
    parquet_dir = tmp / "pq"
    parquet_dir.mkdir()
    pq.write_table(pa.table({"file": ["a"], "feature_vector": ["x"]}), parquet_dir / "in.parquet")
    return {"file": tmp / "a_file", "pq": parquet_dir}


BAD_VALUES = [
    (["--batch_size", "0"], "--batch_size must be at least 1, not 0"),
    (["--batch_size=-1"], "--batch_size must be at least 1, not -1"),
    (["--threads", "0"], "--threads must be at least 1, not 0"),
    (["--threads=-2"], "--threads must be at least 1, not -2"),
    (["--max_pixels", "0"], "--max_pixels must be at least 1, not 0"),
    (["--max_pixels=-5"], "--max_pixels must be at least 1, not -5"),
    (["--num_shards=-1"], "--num_shards must be 0"),
    (["--max_error_fraction", "1.5"], "--max_error_fraction must be between 0 and 1"),
    (["--precision", "fp16", "--device", "cpu"], "--precision fp16: precision='fp16' needs CUDA"),
    (["--no_wait"], "--no_wait needs a runner that runs the job elsewhere"),
    (["--weight", "osnet_ibn_x1_0_random.pth"], "unknown option --weight; did you mean --weights?"),
    (["--num_shard", "2"], "unknown option --num_shard; did you mean --num_shards?"),
    (["--bogus_option", "3"], "unknown option --bogus_option"),
    (["--bacth_size=4"], "did you mean --batch_size?"),
    (["--runner=FlinkRunner", "--weight=x.pth"], "did you mean --weights?"),
] + ([] if torch.cuda.is_available() else [
    (["--device", "cuda"], "--device cuda, but CUDA is not available"),
    (["--precision", "fp16"], "--precision fp16: precision='fp16' needs CUDA"),  # auto is CPU here
]) + ([] if cpu_supports_bf16() else [
    (["--precision", "bf16", "--device", "cpu"], "on CPU needs cores with native bf16"),
])


def _path_refusals(tmp: Path) -> list[tuple[list[str], str, Path]]:
    """(flags, what the message must say, what must not appear)."""
    paths = _paths(tmp)
    cases = [
        (["--output", str(paths["file"])], "is an existing file", paths["file"].with_name("_LOCK.json")),
        (["--output", str(paths["file"] / "sub")], "which is a file, not a directory", paths["file"] / "sub"),
        (["--output", "/proc/osnet-beam-out"], "cannot create it", Path("/proc/osnet-beam-out")),
        (["--input", str(paths["pq"] / "*.parquet"), "--output", str(paths["pq"])],
         "is inside what --input", paths["pq"] / "_LOCK.json"),
        (["--input", str(tmp / "**"), "--output", str(paths["pq"] / "new")], "is inside what --input", paths["pq"] / "new"),
        (["--input", str(tmp / "missing[1].csv")], "read as a glob", tmp / "out"),
    ]
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp / "locked"
        locked.mkdir(mode=0o500)
        cases.append((["--output", str(locked / "out")], "is not writable", locked / "out"))
    return cases


def _assert_refused(flags, returncode: int, stderr: str, messages: list[str]) -> None:
    assert returncode == 2, (flags, stderr[-2000:])
    error_lines = [line for line in stderr.splitlines() if line.startswith("osnet-beam: error:")]
    assert len(error_lines) == 1, (flags, stderr[-2000:])
    for message in messages:
        assert message in error_lines[0], (flags, message, error_lines[0])
    assert "Traceback" not in stderr, flags


# slow: a CLI process per refusal; the default suite refuses each value and path in-process (below), and
# other CLI tests (test_csv_dialects_cli.py, test_cli_reruns.py) see a refusal's exit 2 and one line
@pytest.mark.slow
def test_bad_flags_values_and_paths_are_refused_at_the_cli(table, tmp_path):
    """Through the CLI: every bad value at once (each named), mistyped flags, each path refusal."""
    default = ["--input", str(table), "--output", str(tmp_path / "out")]
    values = ["--batch_size", "0", "--threads=-2", "--max_pixels", "-5", "--num_shards=-1",
              "--max_error_fraction", "1.5", "--precision", "fp16", "--device", "cpu", "--no_wait"]
    value_messages = ["--batch_size must be at least 1, not 0", "--threads must be at least 1, not -2",
                      "--max_pixels must be at least 1, not -5", "--num_shards must be 0",
                      "--max_error_fraction must be between 0 and 1", "--precision fp16: precision='fp16' needs CUDA",
                      "--no_wait needs a runner"]
    path_cases = _path_refusals(tmp_path)
    calls = [
        (values, value_messages),
        (["--weight", "w.pth", "--num_shard", "2", "--bogus_option", "3"],
         ["unknown option --weight; did you mean --weights?", "unknown option --num_shard; did you mean --num_shards?",
          "unknown option --bogus_option"]),
        *[(flags, [message]) for flags, message, _ in path_cases],
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda call: cli(*default, *call[0]), calls))
    for (flags, messages), done in zip(calls, results):
        _assert_refused(flags, done.returncode, done.stderr, messages)
    assert not (tmp_path / "out").exists()  # nothing left behind by any of them
    for _, _, absent in path_cases:
        assert not absent.exists()


@pytest.mark.parametrize("flags, message", BAD_VALUES, ids=[" ".join(f) for f, _ in BAD_VALUES])
def test_each_bad_value_alone_is_refused(table, tmp_path, capsys, flags, message):
    """Each check on its own (in-process main(), the CLI's entry point, to keep the suite fast)."""
    status = main(["--input", str(table), "--output", str(tmp_path / "out"), *flags])
    _assert_refused(flags, status, capsys.readouterr().err, [message])
    assert not (tmp_path / "out").exists()


def test_each_bad_path_alone_is_refused(table, tmp_path, capsys):
    """The CLI test's path refusals through in-process main(), one at a time."""
    default = ["--input", str(table), "--output", str(tmp_path / "out")]
    for flags, message, absent in _path_refusals(tmp_path):
        _assert_refused(flags, main([*default, *flags]), capsys.readouterr().err, [message])
        assert not absent.exists(), flags
    assert not (tmp_path / "out").exists()


def test_beam_flags_of_every_runner_still_parse(table, tmp_path):
    """--flag=value, --flag value and boolean flags of Beam's runners pass our flag check."""
    common = ["--input", str(table), "--output", str(tmp_path / "out"), "--dry_run=True"]
    runs = [
        ["--direct_num_workers", "2", "--direct_running_mode=multi_processing", "--save_main_session",
         "--experiments=beam_fn_api", "--pickle_library", "cloudpickle"],
        ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--parallelism", "2",
         "--environment_type=EXTERNAL", "--environment_config=localhost:50000", "--checkpointing_interval=10"],
        ["--runner", "PortableRunner", "--job_endpoint=localhost:8099", "--environment_type", "LOOPBACK"],
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda flags: cli(*common, *flags), runs))
    for flags, done in zip(runs, results):
        assert done.returncode == 0, (flags, done.stderr[-2000:])
        assert "osnet-beam: dry run:" in done.stdout and "nothing was submitted" in done.stdout, done.stdout
        assert "Discarding unparseable args" not in done.stderr
    # a flag only Flink's job service knows is left to it, with a warning
    assert "left to the runner's job service: ['--checkpointing_interval=10']" in results[1].stderr
    assert not (tmp_path / "out").exists()


def test_dataflow_dry_run_says_what_it_would_submit(table, tmp_path):
    done = cli(
        "--input", str(table), "--output", "gs://my-bucket/features/run-1", "--runner=DataflowRunner",
        "--dry_run=True", "--project=my-project", "--region=us-central1", "--temp_location=gs://my-bucket/tmp",
        "--job_name=osnet-dry", timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    line = [text for text in done.stdout.splitlines() if text.startswith("osnet-beam: dry run:")]
    assert line, done.stdout
    assert "DataflowRunner would run job osnet-dry (project my-project, region us-central1)" in line[0]
    assert "1 csv input file(s)" in line[0] and "model osnet_x0_25" in line[0] and "nothing was submitted" in line[0]
    # Beam's own validation of Dataflow options is a refusal too, not a traceback
    bad = cli("--input", str(table), "--output", "gs://my-bucket/out", "--runner=DataflowRunner",
              "--dry_run=True", "--project=p", "--region=r", "--temp_location=gs://my-bucket/tmp", timeout=180)
    assert bad.returncode == 2 and "Invalid Project ID (p)" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]


def test_dataflow_gpu_batches_are_planned_for_the_attached_card(table):
    """The launcher sizes Beam's batches for the GPU Dataflow attaches (deploy/dataflow/submit.sh's
    T4: 64, what 16 processes' batches fit in its memory), and refuses a runtime that cannot run
    the asked precision before anything is submitted."""
    dataflow = ["--output", "gs://my-bucket/out", "--runner=DataflowRunner", "--dry_run=True", "--project=my-project",
                "--region=us-central1", "--temp_location=gs://my-bucket/tmp"]
    t4 = "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
    done = cli("--input", str(table), *dataflow, t4, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch on cuda, fp32, batch 64 as planned for the workers" in done.stderr, done.stderr[-2000:]
    bad = cli("--input", str(table), *dataflow, "--device=cuda", "--backend=onnxruntime", "--precision=fp16", timeout=180)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "--backend onnxruntime --device cuda --precision fp16: the onnxruntime backend runs fp32 only" in bad.stderr


def test_tilde_and_literal_bracket_paths(table, tmp_path):
    home = tmp_path / "home"
    (home / "in").mkdir(parents=True)
    literal = home / "in" / "crops[1].csv"
    literal.write_bytes(table.read_bytes())
    (home / "in" / "crops1.csv").write_bytes(table.read_bytes())  # what the glob crops[1].csv would match
    env = {**cli_env(), "HOME": str(home)}
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", "~/in/crops[1].csv", "--output", "~/out"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a file of that name exists, read as that file (not as a glob)" in done.stderr
    assert not (REPO_ROOT / "~").exists()
    run = manifest(home / "out")
    assert [f["path"] for f in run["input"]["files"]] == [str(literal)]
    assert read_features(str(home / "out")).num_rows == 6
