"""The whole job on the real seed table: every row ends as features or as an error, never lost."""
from __future__ import annotations

import collections
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import run
from pipeline.run import main
from testkit.bad_cells import bad_cells
from tests.pipeline_helpers import (
    COLUMNS,
    cosine,
    read_csv_features,
    read_errors,
    read_parquet_features,
    read_seed_rows,
    reference_features,
    write_csv,
)

REFERENCE = "osnet_x0_25_msmt17"
# Bad cells mixed into the table: a few of each family, small enough for a quick job.
INJECTED = [
    c
    for c in bad_cells()
    if c.reason not in ("cell_too_large", "not_a_string") and isinstance(c.cell, str) and len(c.cell) < 100_000
][:16]


@pytest.fixture(scope="module")
def seed_rows(seed_table):
    return read_seed_rows(seed_table)


@pytest.fixture(scope="module")
def reference(reference_dir):
    return reference_features(reference_dir, REFERENCE)


def _mixed_rows(seed_rows):
    """The 198 real rows with the injected bad cells interleaved (frame numbers from 10_000)."""
    rows = [[r[c] for c in COLUMNS] for r in seed_rows]
    for offset, case in enumerate(INJECTED):
        rows.insert(7 * offset + 3, [10_000 + offset, -1, "99", f"bad/{case.name}", case.cell])
    return rows


def _check_features(rows, reference, seed_rows):
    by_file = {r["file"]: r for r in seed_rows}
    assert len(rows) == len(seed_rows)
    assert {r["file"] for r in rows} == set(by_file)
    for row in rows:
        original = by_file[row["file"]]
        for column in ("frame", "track_id", "camera"):
            assert row[column] == original[column] and type(row[column]) is type(original[column])
        assert cosine(np.asarray(row["feature_vector"]), reference[row["file"]]) >= 0.99999


def _check_errors(errors, expected_rows):
    """Each injected row is in the errors with its reason and its original cells, unchanged."""
    by_file = {e["row"]["file"]: e for e in errors if "row" in e}
    for case, row in expected_rows:
        error = by_file[row[3]]
        assert error["reason"] == case.reason, case.name
        assert error["row"] == dict(zip(COLUMNS, row))
        assert error["detail"]


def test_csv_table_with_bad_rows_to_parquet(tmp_path, seed_rows, reference):
    rows = _mixed_rows(seed_rows)
    broken = '5,5,"01","broken.png","{\'width\': 48, \'image\': \'789c\n'
    write_csv(tmp_path / "table.csv", rows, raw_lines={10: broken})
    counters = run(["--input", str(tmp_path / "table.csv"), "--output", str(tmp_path / "out")])

    table = read_parquet_features(tmp_path / "out")
    assert table.schema.field("feature_vector").type == pa.list_(pa.float32())
    assert table.schema.field("frame").type == pa.int64()
    assert table.schema.field("camera").type == pa.string()
    assert table.column_names == COLUMNS
    _check_features(table.to_pylist(), reference, seed_rows)

    errors = read_errors(tmp_path / "out")
    bad = [(case, row) for case, row in zip(INJECTED, [r for r in rows if r[1] == -1])]
    _check_errors(errors, bad)
    csv_errors = [e for e in errors if e["reason"] == "bad_csv_record"]
    assert len(csv_errors) == 1 and csv_errors[0]["raw_line"] == broken.rstrip("\n")
    text = (tmp_path / "table.csv").read_text()
    assert csv_errors[0]["line"] == text[: text.index(broken)].count("\n") + 1
    # every row in is a feature row or an error row, and the counters say the same
    assert table.num_rows + len(errors) == len(rows) + 1
    assert counters["rows_read"] == len(rows) + 1
    assert counters["rows_encoded"] == table.num_rows
    reasons = collections.Counter(e["reason"] for e in errors)
    assert {k[len("errors_"):]: v for k, v in counters.items() if k.startswith("errors_")} == reasons


def test_parquet_shards_to_csv(tmp_path, seed_rows, reference):
    rows = _mixed_rows(seed_rows)
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)})
    table = table.append_column("score", pa.array(np.linspace(0, 1, len(rows)), pa.float32()))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for shard, start in enumerate(range(0, len(rows), 80)):
        pq.write_table(table.slice(start, 80), inputs / f"part-{shard}.parquet")
    out = tmp_path / "out"
    run(["--input", str(inputs / "*.parquet"), "--output", str(out), "--output_format", "csv"])

    features = read_csv_features(out)
    _check_features(features, reference, seed_rows)
    scores = dict(zip(table.column("file").to_pylist(), table.column("score").to_pylist()))
    assert all(row["score"] == scores[row["file"]] for row in features)
    errors = read_errors(out)
    bad = [(case, row) for case, row in zip(INJECTED, [r for r in rows if r[1] == -1])]
    for error in errors:
        error["row"].pop("score")
    _check_errors(errors, bad)
    assert len(features) + len(errors) == len(rows)
    lines = (out / next(p.name for p in out.iterdir() if p.suffix == ".csv")).read_text().splitlines()
    assert lines[0] == '"frame","track_id","camera","file","feature_vector","score"'
    assert all(re.match(r'-?\d+,-?\d+,"\d\d","[^"]+","[0-9a-f]+",[-+.e\d]+$', line) for line in lines[1:])


def test_output_column_and_bgr_and_explicit_options(tmp_path, seed_rows, reference):
    rows = [[r[c] for c in COLUMNS] for r in seed_rows[:12]]
    write_csv(tmp_path / "t.csv", rows)
    out = tmp_path / "out"
    run(["--input", str(tmp_path / "t.csv"), "--output", str(out), "--output_column", "osnet",
         "--arch", "osnet_x0_25", "--batch_size", "5", "--backend", "torch", "--device", "cpu",
         "--num_shards", "2"])
    table = read_parquet_features(out)
    assert table.column_names == ["frame", "track_id", "camera", "file", "osnet"]
    assert len(list(out.glob("features-*-of-00002.parquet"))) == 2
    for row in table.to_pylist():
        assert cosine(np.asarray(row["osnet"]), reference[row["file"]]) >= 0.99999


def test_missing_image_column_fails_at_start_naming_columns(tmp_path, capsys):
    write_csv(tmp_path / "t.csv", [[1, "a"]], header=["frame", "crop"])
    status = main(["--input", str(tmp_path / "t.csv"), "--output", str(tmp_path / "out")])
    assert status == 2
    message = capsys.readouterr().err
    assert "feature_vector" in message and "['frame', 'crop']" in message
    assert not (tmp_path / "out").exists()


def test_unreadable_parquet_shard_fails_at_start_naming_it(tmp_path, seed_rows, capsys):
    good = pa.table({"file": ["a"], "feature_vector": [seed_rows[0]["feature_vector"]]})
    pq.write_table(good, tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 this is not parquet")
    status = main(["--input", str(tmp_path / "*.parquet"), "--output", str(tmp_path / "out")])
    assert status == 2
    assert "b.parquet" in capsys.readouterr().err


def test_unsafe_checkpoint_is_refused_before_the_job(tmp_path, seed_rows, capsys):
    marker = tmp_path / "marker"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle
    import torch

    torch.save({"state_dict": Exploit()}, tmp_path / "evil.pth", pickle_protocol=pickle.DEFAULT_PROTOCOL)
    write_csv(tmp_path / "t.csv", [[r[c] for c in COLUMNS] for r in seed_rows[:2]])
    status = main(["--input", str(tmp_path / "t.csv"), "--output", str(tmp_path / "out"),
                   "--weights", str(tmp_path / "evil.pth")])
    assert status == 2 and not marker.exists()
    assert "evil.pth" in capsys.readouterr().err


def test_weights_loaded_once_per_process(tmp_path, seed_rows, monkeypatch):
    from transforms import inference

    monkeypatch.setattr(inference, "_ENGINES", {})
    monkeypatch.setattr(inference, "load_count", 0)
    rows = [[r[c] for c in COLUMNS] for r in seed_rows]
    for shard in range(3):
        write_csv(tmp_path / f"t{shard}.csv", rows[shard::3])
    run(["--input", str(tmp_path / "t*.csv"), "--output", str(tmp_path / "out"), "--batch_size", "8"])
    assert inference.load_count == 1
    assert read_parquet_features(tmp_path / "out").num_rows == len(rows)
