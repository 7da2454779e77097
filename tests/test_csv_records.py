"""CSV records: pandas' QUOTE_NONNUMERIC tables read back with their types; broken lines isolated."""
from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.csv_records import (
    BrokenRecord,
    CsvHeaderError,
    Record,
    format_record,
    iter_records,
    read_header,
    split_record,
)


def _read(text: str) -> tuple[list[str], list]:
    stream = io.StringIO(text, newline="")
    header = read_header(stream)
    return header, list(iter_records(stream, len(header)))


def test_pandas_quote_nonnumeric_table_reads_back_with_types():
    frame = pd.DataFrame(
        {
            "frame": [0, 1, 2],
            "camera": ["01", "02", "01"],
            "score": [0.5, float("nan"), 2.25],
            "flag": [True, False, True],
            "note": ['say "hi", ok', "multi\nline", "x" * 200_000],
        }
    )
    header, records = _read(frame.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC))
    assert header == list(frame.columns)
    assert all(isinstance(r, Record) for r in records)
    values = [r.values for r in records]
    assert values[0] == [0, "01", 0.5, True, 'say "hi", ok']
    assert values[1] == [1, "02", "", False, "multi\nline"]  # pandas writes NaN as ""
    assert values[2][4] == "x" * 200_000
    assert [r.line_number for r in records] == [1, 2, 4]


def test_format_record_writes_what_pandas_writes():
    frame = pd.DataFrame({"a": [7], "b": ["q\"uote,"], "c": [1.5], "d": [False]})
    text = frame.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    _, records = _read(text)
    assert format_record(records[0].values) == text.splitlines()[1]
    assert format_record([np.int64(3), np.float32(0.5), None]) == '3,0.5,""'


def test_truncated_line_costs_one_row_and_reading_resumes():
    good = '1,"01","{\'width\': 1}"\n'
    truncated = '2,"01","{\'width\': 1, \'image\': \'78\n'  # the closing quote was never written
    text = '"frame","camera","cell"\n' + good + truncated + good + good
    _, records = _read(text)
    assert [type(r) for r in records] == [Record, BrokenRecord, Record, Record]
    broken = records[1]
    assert broken.raw == truncated.rstrip("\n") and broken.line_number == 2
    assert "never closed" in broken.detail


def test_wrong_field_count_and_junk_after_quote_are_broken_records():
    text = '"a","b"\n1,2\n1,2,3\n"x"y,2\n3,4\n'
    _, records = _read(text)
    kinds = [type(r).__name__ for r in records]
    assert kinds == ["Record", "BrokenRecord", "BrokenRecord", "Record"]
    assert "expected 2 fields" in records[1].detail
    assert records[2].raw == '"x"y,2'


def test_blank_lines_are_skipped_and_crlf_is_accepted():
    _, records = _read('"a","b"\r\n1,"x"\r\n\r\n2,"y"\r\n')
    assert [r.values for r in records] == [[1, "x"], [2, "y"]]


def test_unquoted_text_that_is_not_a_canonical_number_stays_text():
    # issue 12 item 4: pandas' QUOTE_MINIMAL leaves these strings unquoted; none may be rewritten
    assert split_record("01,1,-0,1e3,abc,") == ["01", 1, "-0", "1e3", "abc", None]
    assert split_record("1.10,1.1,true,True,+1,1e+20,inf,NaN,0.50") == [
        "1.10", 1.1, "true", True, "+1", 1e20, float("inf"), "NaN", "0.50"
    ]


@pytest.mark.parametrize("text", ["", '"a",""\n', '"a","a"\n', '"a\n'])
def test_bad_headers_are_refused(text):
    with pytest.raises(CsvHeaderError):
        read_header(io.StringIO(text, newline=""))


_values = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_values, min_size=3, max_size=3), min_size=1, max_size=8))
def test_round_trip_of_arbitrary_records(rows):
    text = format_record(["a", "b", "c"]) + "\n" + "".join(format_record(r) + "\n" for r in rows)
    _, records = _read(text)
    assert all(isinstance(r, Record) for r in records)
    assert [r.values for r in records] == rows


def test_csv_output_writes_wide_ints_bare_and_number_like_text_quoted():
    import decimal

    # --output_format csv: a decimal column stays a bare number, a text column keeps its quotes
    assert format_record([decimal.Decimal(2**70), "007", "-0", 1e20, True]) == (
        '1180591620717411303424,"007","-0",1e+20,True'
    )
    assert split_record('1180591620717411303424,"007","-0",1e+20,True') == [2**70, "007", "-0", 1e20, True]
