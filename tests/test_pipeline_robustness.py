"""The job under failure: bad checkpoints at the CLI, a crash part-way, reruns, remote weights."""
from __future__ import annotations

import glob
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from apache_beam.io.filesystem import FileSystem

from pipeline import run
from pipeline.run import main
from tests.cli_helpers import cli_env
from tests.conftest import REPO_ROOT
from tests.pipeline_helpers import COLUMNS, read_errors, read_parquet_features, read_seed_rows, write_csv
from transforms import inference, write
from transforms.crop_codec import encode_crop
from weights import BUNDLED_WEIGHTS


@pytest.fixture(scope="module")
def small_table(tmp_path_factory, seed_table):
    rows = [[r[c] for c in COLUMNS] for r in read_seed_rows(seed_table)[:30]]
    rows.append([999, -1, "99", "bad/empty", ""])
    path = tmp_path_factory.mktemp("in") / "t.csv"
    write_csv(path, rows)
    return path


def _bad_checkpoints(tmp_path):
    good = open(BUNDLED_WEIGHTS, "rb").read()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 64)
    state = torch.load(BUNDLED_WEIGHTS, weights_only=True)
    del state["conv5.conv.weight"]
    torch.save(state, tmp_path / "missing.pth")
    return [
        (["--weights", str(tmp_path / "truncated.pth")], "truncated.pth"),
        (["--weights", str(tmp_path / "random.pth")], "random.pth"),
        (["--weights", str(tmp_path / "missing.pth")], "missing"),
        (["--arch", "osnet_ibn_x1_0"], "osnet_ibn_x1_0"),
        (["--weights", str(tmp_path / "absent.pth")], "absent.pth"),
    ]


def test_bad_checkpoints_stop_the_cli_with_a_clear_error(tmp_path, small_table, capsys):
    for flags, named in _bad_checkpoints(tmp_path):
        status = main(["--input", str(small_table), "--output", str(tmp_path / "out"), *flags])
        message = capsys.readouterr().err
        assert status == 2, flags
        assert "error:" in message and named in message, (flags, message)
        assert not (tmp_path / "out").exists()


def test_a_job_that_fails_part_way_leaves_no_final_shards_and_a_rerun_is_complete(
    tmp_path, small_table, monkeypatch
):
    out = tmp_path / "out"
    original = write._ToOutputRow.process
    seen = []

    def crash_after_ten(self, element):
        seen.append(1)
        if len(seen) > 10:
            raise RuntimeError("worker lost (simulated)")
        yield from original(self, element)

    monkeypatch.setattr(write._ToOutputRow, "process", crash_after_ten)
    with pytest.raises(Exception, match="simulated"):
        run(["--input", str(small_table), "--output", str(out), "--batch_size", "4"])
    assert glob.glob(str(out / "features-*")) == [] and glob.glob(str(out / "errors-*")) == []

    monkeypatch.setattr(write._ToOutputRow, "process", original)
    run(["--input", str(small_table), "--output", str(out)])
    first = sorted(read_parquet_features(out).column("file").to_pylist())
    run(["--input", str(small_table), "--output", str(out), "--overwrite"])  # a rerun over the same directory
    assert sorted(read_parquet_features(out).column("file").to_pylist()) == first
    assert len(first) == 30 and [e["reason"] for e in read_errors(out)] == ["empty_cell"]


class _MemoryFileSystem(FileSystem):
    """A Beam filesystem for ``memtest://``: stands in for gs:// or s3:// and counts reads."""

    files: dict[str, bytes] = {}
    opened: list[str] = []

    @classmethod
    def scheme(cls):
        return "memtest"

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        self.opened.append(path)
        return io.BytesIO(self.files[path])

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError

    join = split = mkdirs = has_dirs = _list = create = copy = rename = exists = _unsupported
    size = last_updated = checksum = delete = metadata = _unsupported


def test_weights_from_another_filesystem_are_copied_once(tmp_path, small_table, monkeypatch):
    path = "memtest://bucket/models/osnet_x0_25_msmt17.pth"
    _MemoryFileSystem.files[path] = open(BUNDLED_WEIGHTS, "rb").read()
    _MemoryFileSystem.opened.clear()
    monkeypatch.setattr(inference, "_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(inference, "_ENGINES", {})
    run(["--input", str(small_table), "--output", str(tmp_path / "out"), "--weights", path])
    assert _MemoryFileSystem.opened == [path]  # launcher and worker share the machine's cache
    assert read_parquet_features(tmp_path / "out").num_rows == 30


def test_a_runner_without_metrics_gets_a_summary_from_the_shards(tmp_path, small_table, monkeypatch, capsys):
    """Dataflow dry runs, templates and some portable runners give a result without metrics."""
    import apache_beam as beam

    from pipeline import read_features

    class NoMetrics:
        def __init__(self, result):
            self._result = result

        def wait_until_finish(self):
            return self._result.wait_until_finish()

        def metrics(self):
            raise NotImplementedError

    original = beam.Pipeline.run
    monkeypatch.setattr(beam.Pipeline, "run", lambda self, *a, **k: NoMetrics(original(self, *a, **k)))
    out = tmp_path / "out"
    assert main(["--input", str(small_table), "--output", str(out)]) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("osnet-beam: rows_read=")]
    assert summary and "rows_read=31 decoded=30 encoded=30 errors=1 (empty_cell=1)" in summary[0]
    assert "reports no metrics: counts from the output shards" in summary[0]
    assert read_features(str(out)).num_rows == 30


#: Loaded by every Python process of the CLI run below (PYTHONPATH): ONNX Runtime raises, on the
#: model's own threads, for a crop of one flat colour, as a network failing part-way would.
_FAILING_NETWORK = '''
import numpy as np
import model.runtimes.onnx_runtime as backend

_run = backend.OnnxRuntimeBackend._run


def _fails_on_flat_crops(self, batch):
    if np.ptp(batch[0], axis=(1, 2)).max() == 0:
        raise RuntimeError("simulated failure on the network's thread")
    return _run(self, batch)


backend.OnnxRuntimeBackend._run = _fails_on_flat_crops
'''


def test_the_cli_turns_a_batch_the_network_fails_on_into_error_rows_with_their_cells(tmp_path, seed_table):
    """``python -m pipeline`` as a user runs it, the network raising on its threads (after
    RunInference handed the batch over) for one crop: the rows of that crop's batch, and only
    those, are ``inference_failed`` error rows with every cell as read, the others have
    features; read back with README's recipe."""
    from pipeline import read_errors as read_run_errors  # README's recipe
    from pipeline import read_features

    seed = [[r[c] for c in COLUMNS] for r in read_seed_rows(seed_table)[:40]]
    flat = [4242, 7, "01", "flat/grey.png", encode_crop(np.full((64, 32, 3), 128, np.uint8))]
    rows = seed[:21] + [flat] + seed[21:]
    table = tmp_path / "in.csv"
    write_csv(table, rows)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_FAILING_NETWORK)
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join((str(hooks), env["PYTHONPATH"]))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", str(table), "--output", str(out), "--batch_size", "8"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "inference_failed=8" in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]

    errors = read_run_errors(str(out))
    features = read_features(str(out))
    by_file = {row[3]: row for row in rows}
    failed = [e["row"]["file"] for e in errors]
    assert len(errors) == 8 and "flat/grey.png" in failed
    for error in errors:
        assert error["reason"] == "inference_failed" and "simulated failure" in error["detail"]
        assert list(error["row"].values()) == by_file[error["row"]["file"]], error["row"]["file"]
    assert sorted(features.column("file").to_pylist() + failed) == sorted(by_file)
