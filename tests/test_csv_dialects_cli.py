"""Files from pandas, Excel and shell habits through the CLI, as a user runs it (issue 12 items 2,
3, 4, 6, 7, 9, 13): every pass-through value comes back exactly, rows read back with pyarrow as the
README shows; a record that does not decode is an error row with its bytes; bad dialect options
exit 2 before the job starts.
"""
from __future__ import annotations

import base64
import csv
import decimal
import glob
import json
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT
from tests.pipeline_helpers import read_seed_rows

NUMBER_LIKE = ["1.10", "007", "1e3", "true", "-0"]


@pytest.fixture(scope="module")
def cells(seed_table):
    rows = read_seed_rows(seed_table)
    return [(r["file"], r["feature_vector"]) for r in rows[:6]]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _features(out) -> pa.Table:
    return pq.read_table(glob.glob(str(out / "features-*.parquet")))  # README's recipe


def _errors(out) -> list[dict]:
    return [json.loads(line) for path in sorted(glob.glob(str(out / "errors-*.jsonl")))
            for line in open(path, encoding="utf-8") if line.strip()]


def test_pandas_default_csv_keeps_number_like_text_long_notes_and_wide_ints(tmp_path, cells):
    note = "\n".join(f"line {i}, with \"quotes\"" for i in range(100))  # 100 lines in one cell
    frame = pd.DataFrame({
        "frame": [0, 1, 2, 3, 4],
        "camera": ["01", "02", "01", "02", "01"],
        "text": NUMBER_LIKE,  # pandas' QUOTE_MINIMAL writes these unquoted
        "big": [2**70, 1, -(2**65), 7, 2**63],
        "note": [note, "short", note, "", note + "\n"],
        "file": [f for f, _ in cells[:5]],
        "feature_vector": [c for _, c in cells[:5]],
    })
    frame.to_csv(tmp_path / "t.csv", index=False)  # pandas' defaults
    done = _run("--input", str(tmp_path / "t.csv"), "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]

    table = _features(tmp_path / "out")
    assert _errors(tmp_path / "out") == [] and table.num_rows == 5
    rows = sorted(table.drop(["feature_vector"]).to_pylist(), key=lambda r: r["frame"])
    reference = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    assert [r["text"] for r in rows] == list(reference["text"]) == NUMBER_LIKE
    assert [r["camera"] for r in rows] == ["01", "02", "01", "02", "01"]
    assert [r["note"] for r in rows] == [note, "short", note, None, note + "\n"]
    assert table.schema.field("big").type == pa.decimal128(38, 0)
    assert [r["big"] for r in rows] == [decimal.Decimal(v) for v in frame["big"]]
    assert table.schema.field("frame").type == pa.int64()


def _header_only(path, columns, bom=True):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ",".join(f'"{c}"' for c in columns).encode() + b"\r\n")


def test_shards_from_excel_and_tsv_with_other_types_lose_no_row(tmp_path, cells):
    columns = ["frame", "id", "file", "feature_vector"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    _header_only(inputs / "part-0.csv", columns)  # Excel "CSV UTF-8", no rows: BOM and quoted header
    first = pd.DataFrame({"frame": [0, 1], "id": [7, 8], "file": [f for f, _ in cells[:2]],
                          "feature_vector": [c for _, c in cells[:2]]})
    data = first.to_csv(index=False, lineterminator="\r\n").encode()
    (inputs / "part-1.csv").write_bytes(b"\xef\xbb\xbf" + data)  # BOM and CRLF, as Excel writes
    second = pd.DataFrame({"frame": [2, 3], "id": ["a7", "0042"], "file": [f for f, _ in cells[2:4]],
                           "feature_vector": [c for _, c in cells[2:4]]})
    second.to_csv(inputs / "part-2.tsv", index=False, sep="\t")  # tab-delimited, pandas' defaults
    third = second.assign(frame=[4, 5], id=[9, 10], file=[f for f, _ in cells[4:6]],
                          feature_vector=[c for _, c in cells[4:6]])
    third.to_csv(inputs / "part-3.csv", index=False)
    done = _run("--input", str(inputs / "part-*"), "--output", str(tmp_path / "out"), "--input_format", "csv")
    assert done.returncode == 0, done.stderr[-3000:]

    table = _features(tmp_path / "out")
    assert table.column_names == columns  # no "\ufeffframe"
    assert _errors(tmp_path / "out") == []
    rows = sorted(table.drop(["feature_vector"]).to_pylist(), key=lambda r: r["frame"])
    # ints in two shards, text in the TSV one: the column is text, every value exactly as written
    assert table.schema.field("id").type == pa.string()
    assert [r["id"] for r in rows] == ["7", "8", "a7", "0042", "9", "10"]
    assert [r["frame"] for r in rows] == [0, 1, 2, 3, 4, 5]


# slow: three CLI runs; in-process, test_csv_dialect_properties.py reads cp1252 exactly, gives
# bad_encoding errors with their bytes read as UTF-8, and names the delimiter in header errors
@pytest.mark.slow
def test_semicolon_latin1_file_with_its_options_and_without(tmp_path, cells):
    frame = pd.DataFrame({"frame": [0, 1, 2], "file": ["café.png", "naïve “quoted”.png", "plain.png"],
                          "feature_vector": [c for _, c in cells[:3]]})
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False, sep=";", encoding="cp1252")

    refused = _run("--input", str(path), "--output", str(tmp_path / "refused"))
    assert refused.returncode == 2
    assert "delimiter comma" in refused.stderr and "--csv_delimiter" in refused.stderr
    assert not (tmp_path / "refused").exists()

    done = _run("--input", str(path), "--output", str(tmp_path / "out"), "--csv_delimiter", ";",
                "--encoding", "cp1252")
    assert done.returncode == 0, done.stderr[-3000:]
    table = _features(tmp_path / "out")
    assert sorted(table.column("file").to_pylist()) == sorted(frame["file"])

    # read as UTF-8 (the default): the two records that are not UTF-8 are errors with their bytes
    done = _run("--input", str(path), "--output", str(tmp_path / "utf8"), "--csv_delimiter", "semicolon")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _features(tmp_path / "utf8").column("file").to_pylist() == ["plain.png"]
    errors = sorted(_errors(tmp_path / "utf8"), key=lambda e: e["line"])
    assert [e["reason"] for e in errors] == ["bad_encoding", "bad_encoding"]
    raw_lines = path.read_bytes().split(b"\r\n" if b"\r\n" in path.read_bytes() else b"\n")
    assert [base64.b64decode(e["raw_base64"]) for e in errors] == raw_lines[1:3]
    assert all("--encoding" in e["detail"] for e in errors)
    assert "bad_encoding=2" in done.stdout


# one refusal through the CLI by default; every option's refusal is checked in-process by
# test_csv_dialect_properties.py::test_unusable_dialect_options_are_refused, the rest here in the full run
@pytest.mark.parametrize("args, message", [
    (["--encoding", "utf-16"], "ASCII-compatible"),
    pytest.param(["--encoding", "klingon"], "not a Python codec", marks=pytest.mark.slow),
    pytest.param(["--csv_delimiter", ";;"], "--csv_delimiter", marks=pytest.mark.slow),
])
def test_unusable_dialect_options_exit_2_before_the_job(tmp_path, cells, args, message):
    pd.DataFrame({"file": ["a"], "feature_vector": [cells[0][1]]}).to_csv(tmp_path / "t.csv", index=False)
    done = _run("--input", str(tmp_path / "t.csv"), "--output", str(tmp_path / "out"), *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


# slow: test_csv_dialect_properties.py::test_bom_is_stripped_and_named_in_header_errors has the message
@pytest.mark.slow
def test_bom_in_a_file_read_as_latin1_is_refused_naming_it(tmp_path, cells):
    text = pd.DataFrame({"file": ["a"], "feature_vector": [cells[0][1]]}).to_csv(index=False)
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    done = _run("--input", str(tmp_path / "t.csv"), "--output", str(tmp_path / "out"), "--encoding", "latin-1")
    assert done.returncode == 2 and "byte-order mark" in done.stderr and "--encoding utf-8" in done.stderr


def _widening_table(tmp_path):
    """pandas' default CSV whose columns look typed in every file's sample (the first 1,000
    records) and get a value of another type later."""
    from testkit.bad_cells import sample_crop
    from transforms.crop_codec import encode_crop
    from transforms.read import TYPE_SAMPLE_RECORDS

    n = TYPE_SAMPLE_RECORDS + 6
    cell = encode_crop(sample_crop(12, 6, 3))
    frame = pd.DataFrame({
        "frame": list(range(n)),
        "track": list(range(n - 1)) + ["n/a"],  # text in an int column
        "big": [i * 3 for i in range(n - 2)] + [2**70, 5],  # a wider int: decimal
        "score": pd.Series([i + 0.5 for i in range(n - 3)] + [3, 4.5, 5.5], dtype=object),  # "3": not a float's text
        "flag": [i % 2 == 0 for i in range(n - 4)] + ["maybe", True, False, True],
        "file": [f"crop/{i}.png" for i in range(n)],
        "feature_vector": [cell] * n,
    })
    frame.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv", pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)


@pytest.mark.parametrize("output_format", ["parquet", "csv"])
def test_a_value_past_every_sample_widens_its_column_and_keeps_its_row(tmp_path, output_format):
    """Issue 12 items 6-7: no row loses its features to a pass-through column's type; the column
    is widened (int64 to decimal for a wider int, else to text) and every value keeps its text."""
    from pipeline import read_errors, read_features

    table, texts = _widening_table(tmp_path)
    out = tmp_path / "out"
    done = _run("--input", str(table), "--output", str(out), "--output_format", output_format,
                "--num_shards", "2", "--batch_size", "64")
    assert done.returncode == 0, done.stderr[-3000:]
    for column, planned, final, example in [("track", "int64", "string", "n/a"), ("big", "int64", "decimal128(38, 0)",
                                            str(2**70)), ("score", "double", "string", "3"), ("flag", "bool", "string", "maybe")]:
        assert f"column {column!r} is {final}, not {planned}" in done.stdout and repr(example) in done.stdout, done.stdout
    run = json.loads((out / "_SUCCESS.json").read_text())
    assert run["counts"]["rows_read"] == len(texts) == run["counts"]["rows_encoded"] and read_errors(str(out)) == []
    assert run["features"]["widened_columns"]["track"] == {"planned": "int64", "type": "string", "example": "n/a"}
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("beam-temp")) == []
    features = read_features(str(out))
    if output_format == "parquet":
        assert _features(out).num_rows == len(texts)  # README's recipe: every shard in one schema
        schemas = {pq.read_schema(p).remove_metadata() for p in glob.glob(str(out / "features-*.parquet"))}
        assert len(schemas) == 1 and len(glob.glob(str(out / "features-*.parquet"))) == 3  # 2 + the held rows'
        assert [f.type for f in schemas.pop()][:6] == [f.type for f in features.schema][:6]
    back = features.to_pandas().sort_values("frame").reset_index(drop=True)
    assert back["track"].tolist() == texts["track"].tolist()
    assert back["score"].tolist() == texts["score"].tolist() and back["flag"].tolist() == texts["flag"].tolist()
    assert [int(v) for v in back["big"]] == [int(t) for t in texts["big"]]
    assert features.schema.field("frame").type == pa.int64() and features.schema.field("big").type == pa.decimal128(38, 0)
    assert all(len(v) == 512 for v in back["feature_vector"])


def test_an_unclosed_quote_costs_one_row_not_the_rows_up_to_the_next_multiline_cell(tmp_path, cells):
    """A whole-read file (its quotes do not balance line by line): a line whose quote never closes,
    then good rows, then a row whose note spans lines. Every good row comes back as features, the
    broken line is one bad_csv_record error at its own line; in == features + errors."""
    good = [[i, f"'{i}", f, c] for i, (f, c) in enumerate(cells)]
    good[4][1] = "two\nlines"
    path = tmp_path / "t.csv"
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(["frame", "note", "file", "feature_vector"])
        writer.writerows(good[:2])
        stream.write('99,"never closed,"broken.png","{\'width\': 1}"\n')  # 5 quotes: odd
        writer.writerows(good[2:])
    out = tmp_path / "out"
    done = _run("--input", str(path), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "read whole by one worker" in done.stdout + done.stderr
    assert "one worker runs the job here" in done.stdout + done.stderr  # no shuffle holding the file
    features = _features(out)
    assert sorted(features.column("file").to_pylist()) == sorted(f for f, _ in cells)
    assert features.to_pandas().set_index("frame").loc[4, "note"] == "two\nlines"
    errors = _errors(out)
    assert [(e["reason"], e["line"]) for e in errors] == [("bad_csv_record", 4)], errors
    assert errors[0]["raw_line"].startswith("99,") and "\n" not in errors[0]["raw_line"]
    assert json.loads((out / "_SUCCESS.json").read_text())["counts"]["rows_read"] == len(cells) + 1
