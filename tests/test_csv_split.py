"""The CSV source: split by byte ranges, every record read exactly once, line numbers kept.

The reference everywhere is the unsplit read: :mod:`transforms.csv_records` over the whole file
as one text stream (how the reader worked before files were split). Each test compares what the
source's ranges give, parsed, with that.
"""
from __future__ import annotations

import bz2
import gzip
import io
import itertools
import logging
import random
import re
from pathlib import Path

import apache_beam as beam
import pytest
import zstandard
from apache_beam.io import source_test_utils
from apache_beam.runners import pipeline_context
from apache_beam.utils import windowed_value
from apache_beam.testing.test_pipeline import TestPipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms import csv_records, csv_source
from transforms.csv_source import (
    RAW_RECORD_CODER,
    CsvFileSource,
    ReadCsvRecords,
    parse_raw_record,
    plan_csv_files,
    scan_csv_file,
)
from apache_beam.io.filesystems import FileSystems

from transforms.read import open_lines

N_FIELDS = 3
HEADER = '"id","name","blob"'

# ---------------------------------------------------------------------------------------------
# Strategies: record contents and files


def _text(multiline: bool, long: bool = True) -> st.SearchStrategy[str]:
    alphabet = st.sampled_from(list('ab ,"\'x{}:;') + (["\n", "\r"] if multiline else []))
    short = st.text(alphabet, max_size=12)
    if not long:
        return st.one_of(short, st.just(""))
    long_cell = st.builds(lambda c, n: c * n, st.sampled_from("xyz,\""), st.integers(200, 3000))
    return st.one_of(short, short, long_cell, st.just(""))


def _record(multiline: bool, long: bool = True) -> st.SearchStrategy[list]:
    value = st.one_of(
        _text(multiline, long), st.integers(-10**6, 10**6), st.none(), st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
    )
    return st.lists(value, min_size=N_FIELDS, max_size=N_FIELDS)


BROKEN_LINES = st.sampled_from(['1,2', '"open,2,3', 'a"b,2,3', '1,2,3,4', '', '  ', '"x"y,1,2'])


@st.composite
def csv_files(
    draw, multiline=False, broken=True, min_records=0, max_records=25, long=True
) -> bytes:
    """A whole CSV file: header, records, now and then a broken or blank line."""
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [HEADER]
    for _ in range(draw(st.integers(min_records, max_records))):
        if broken and draw(st.integers(0, 9)) == 0:
            line = draw(BROKEN_LINES)
            if not multiline and line.count('"') % 2:
                line = line.replace('"', "")
            lines.append(line)
        else:
            lines.append(csv_records.format_record(draw(_record(multiline, long))))
    text = ending.join(lines)
    if draw(st.booleans()):
        text += ending  # with or without a final line ending
    return text.encode("utf-8")


def reference(data: bytes) -> list[tuple]:
    """The unsplit read: csv_records over the file's byte lines as one stream, header consumed."""
    records = csv_records.iter_raw_records(io.BytesIO(data))
    next(records)
    out = []
    for line, raw, _balanced in records:
        out += [_key(r, line) for r in csv_records.iter_records([raw], N_FIELDS)]
    return out


def _key(parsed, line: int) -> tuple:
    if isinstance(parsed, csv_records.Record):
        return ("row", line, repr(parsed.values))
    return ("broken", line, parsed.raw, parsed.detail)


def parsed(raw_records) -> list[tuple]:
    out = []
    for record in raw_records:
        result = parse_raw_record(record, N_FIELDS)
        if result is not None:
            out.append(_key(result, result.line_number))
    return out


def single_file_source(path: Path, **scan):
    """The per-file source Beam reads (the file's one sub-source), with a fresh plan."""
    plan = scan_csv_file(str(path), path.stat().st_size, **scan)
    return plan, list(CsvFileSource(plan).split(float("inf")))[0].source


def _write(tmp_path: Path, data: bytes, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------------------------
# Property tests


@PROPERTY
@given(data=csv_files(), bundle=st.integers(1, 4000), seed=st.integers(0, 2**32 - 1))
def test_ranges_read_every_record_once(tmp_path_factory, data, bundle, seed):
    path = _write(tmp_path_factory.mktemp("split"), data)
    plan, source = single_file_source(path)
    expected = reference(data)
    assert plan.splittable, plan.whole_reason
    # the runner's initial splits at a random bundle size
    splits = [(b.source, b.start_position, b.stop_position) for b in source.split(bundle)]
    source_test_utils.assert_sources_equal_reference_source((source, None, None), splits)
    # random split points, read range by range
    points = sorted(random.Random(seed).sample(range(1, len(data) + 1), min(5, len(data))))
    bounds = [0, *points, len(data)]
    records = []
    for start, stop in zip(bounds, bounds[1:]):
        if start < stop:
            records += source_test_utils.read_from_source(source, start, stop)
    assert parsed(records) == expected


@PROPERTY
@given(data=csv_files(multiline=True))
def test_files_with_quoted_newlines_or_open_quotes_are_read_whole_and_exactly(tmp_path_factory, data):
    path = _write(tmp_path_factory.mktemp("multi"), data)
    plan, source = single_file_source(path)
    stream_lines = re.split(r"\r\n|\r|\n", data.decode())  # how the text reader ends lines
    if any(line.count('"') % 2 for line in stream_lines):
        assert not plan.splittable
    splits = [(b.source, b.start_position, b.stop_position) for b in source.split(64)]
    assert len(splits) == 1 or plan.splittable
    source_test_utils.assert_sources_equal_reference_source((source, None, None), splits)
    assert parsed(source_test_utils.read_from_source(source)) == reference(data)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=csv_files(broken=False, min_records=8, max_records=12, long=False))
def test_dynamic_splits_at_every_fraction_are_consistent(tmp_path_factory, data):
    path = _write(tmp_path_factory.mktemp("dyn"), data)
    plan, source = single_file_source(path)
    assert len(reference(data)) >= 8
    source_test_utils.assert_split_at_fraction_exhaustive(source, perform_multi_threaded_test=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(csv_files(), csv_files(multiline=True)),
    chunk=st.integers(1, 300), segments=st.integers(1, 3), step=st.integers(1, 200),
)
def test_the_scan_is_the_same_for_any_chunk_or_segment_size_and_its_line_index_is_right(
    tmp_path_factory, monkeypatch, data, chunk, segments, step
):
    path = _write(tmp_path_factory.mktemp("scan"), data)
    with monkeypatch.context() as patch:
        patch.setattr(csv_source, "MIN_INDEX_STEP", step)
        small = scan_csv_file(str(path), len(data), chunk_bytes=chunk, segment_bytes=chunk * segments)
        big = scan_csv_file(str(path), len(data), chunk_bytes=1 << 20)
        assert small == big
        lines = data.split(b"\n")
        quotes_so_far = list(itertools.accumulate(line.count(b'"') for line in lines))
        first_odd = next((i + 1 for i, q in enumerate(quotes_so_far) if q % 2), None)
        if first_odd is not None:
            assert not small.splittable
            if b"\r" not in data:
                assert small.whole_reason.startswith(f"line {first_odd} has an odd number")
            return
        if b"\r" in data.replace(b"\r\n", b""):
            assert small.whole_reason == "a line ends in a lone carriage return"
            return
        assert small.splittable
        # every index entry is a line start with its true line number
        for offset, line in zip(small.index_offsets, small.index_lines):
            if offset == len(data) and not data.endswith(b"\n"):
                continue  # a header without a line ending: no data line at all
            assert data[offset - 1 : offset] == b"\n"
            assert data[:offset].count(b"\n") + 1 == line
        assert small.index_offsets[0] == small.data_start == data.find(b"\n") + 1 or b"\n" not in data
        # and ranges starting between entries still number their records right
        source = list(CsvFileSource(small).split(float("inf")))[0].source
        records = []
        for start in range(0, len(data), max(1, len(data) // 7)):
            records += source_test_utils.read_from_source(source, start, min(len(data), start + len(data) // 7 + 1))
        assert sorted(set(parsed(records))) == sorted(set(reference(data)))


# ---------------------------------------------------------------------------------------------
# Planning decisions and compressed files


def test_plan_says_why_a_file_is_read_whole(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    plain = _write(tmp_path, b'"a","b","c"\n1,2,3\n4,5,6\n', "plain.csv")
    quoted = _write(tmp_path, b'"a","b","c"\n1,"two\nlines",3\n4,5,6\n', "quoted.csv")
    lone_cr = _write(tmp_path, b'"a","b","c"\r1,2,3\r', "cr.csv")
    zipped = _write(tmp_path, gzip.compress(plain.read_bytes()), "plain.csv.gz")
    cr_at_end = _write(tmp_path, b'"a","b","c"\r\n1,2,3\r', "cr_end.csv")
    assert not scan_csv_file(str(cr_at_end), chunk_bytes=4).splittable
    plans = plan_csv_files([str(p) for p in (plain, quoted, lone_cr, zipped)])
    assert [p.splittable for p in plans] == [True, False, False, False]
    assert "line 2 has an odd number" in plans[1].whole_reason
    assert "lone carriage return" in plans[2].whole_reason
    assert "compressed (gzip)" in plans[3].whole_reason
    logged = [r.getMessage() for r in caplog.records if "read whole by one worker" in r.getMessage()]
    assert len(logged) == 3 and all(str(p.path) in m for p, m in zip(plans[1:], logged))


COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".zst": zstandard.ZstdCompressor().compress}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_compressed_csv_reads_as_the_plain_file(tmp_path, suffix):
    rows = [csv_records.format_record([i, f"name {i}", "x" * (i * 37 % 500)]) for i in range(300)]
    data = ("\n".join([HEADER, *rows, '1,"broken', "5,6,7"]) + "\n").encode()
    plain = _write(tmp_path, data, "t.csv")
    packed = _write(tmp_path, COMPRESSORS[suffix](data), "t.csv" + suffix)
    with FileSystems.open(str(packed)) as stream:  # used at planning for the header and sample
        assert b"".join(open_lines(stream)) == data
    (plain_plan,), (packed_plan,) = plan_csv_files([str(plain)]), plan_csv_files([str(packed)])
    assert not packed_plan.splittable
    plain_records = source_test_utils.read_from_source(CsvFileSource(plain_plan))
    packed_records = source_test_utils.read_from_source(CsvFileSource(packed_plan))
    assert parsed(packed_records) == parsed(plain_records) == reference(data)
    assert any(
        key[:3] == ("broken", 302, '1,"broken') and key[3].startswith("a quoted field is never closed")
        for key in parsed(packed_records)
    )


def test_a_path_with_glob_characters_reads_only_itself(tmp_path):
    data = f"{HEADER}\n1,2,3\n".encode()
    odd = _write(tmp_path, data, "run[1]*.csv")
    _write(tmp_path, f"{HEADER}\n7,8,9\n".encode(), "run1x.csv")
    (plan,) = plan_csv_files([str(odd)])
    assert parsed(source_test_utils.read_from_source(CsvFileSource(plan))) == reference(data)


# ---------------------------------------------------------------------------------------------
# What crosses the shuffle


def _coder_urns(components, coder_id: str) -> set[str]:
    coder = components.coders[coder_id]
    urns = {coder.spec.urn}
    for child in coder.component_coder_ids:
        urns |= _coder_urns(components, child)
    return urns


def test_redistributed_records_cross_the_shuffle_compactly(tmp_path):
    quoted = _write(tmp_path, f'{HEADER}\n1,"two\nlines",3\n'.encode(), "quoted.csv")
    path = str(quoted)
    p = beam.Pipeline()
    records = p | ReadCsvRecords(plan_csv_files([path]))
    assert records.element_type == beam.typehints.Tuple[str, int, bytes]
    proto = p.to_runner_api()
    components = proto.components
    gbk = [t for t in components.transforms.values() if t.spec.urn == "beam:transform:group_by_key:v1"]
    assert len(gbk) == 1
    shuffled = components.pcollections[next(iter(gbk[0].inputs.values()))]
    # the coder Beam picked for what crosses the shuffle: (random key, (record, timestamp, pane))
    coder = pipeline_context.PipelineContext(components).coders.get_by_id(shuffled.coder_id)
    urns = _coder_urns(components, components.coders[shuffled.coder_id].component_coder_ids[1])
    assert {"beam:coder:tuple:v1", "beam:coder:string_utf8:v1", "beam:coder:varint:v1", "beam:coder:bytes:v1"} <= urns
    # (Beam's Reshuffle pairs each value with its timestamp, a nullable pickled field that is
    # one byte for the usual None, and its pane; the record itself is a tuple coder, no pickle)
    text = b"x" * 30_000  # about the bytes of one crop's record
    element = (7, ((path, 123_456, text), None, windowed_value.PANE_INFO_UNKNOWN))
    encoded = coder.encode(element)
    overhead = len(encoded) - len(text)
    print(f"bytes crossing the shuffle per record: text + {overhead} (source path {len(path)})")
    assert overhead <= len(path) + 12
    assert coder.decode(encoded) == element
    encoded = RAW_RECORD_CODER.encode((path, 123_456, text))
    assert RAW_RECORD_CODER.decode(encoded) == (path, 123_456, text)


def test_read_csv_records_in_a_pipeline_gives_each_record_once(tmp_path):
    from apache_beam.testing.util import assert_that, equal_to

    rows = [csv_records.format_record([i, f"n{i}", "x" * 5000]) for i in range(400)]
    plain = _write(tmp_path, ("\n".join([HEADER, *rows]) + "\n").encode(), "a.csv")
    quoted = _write(tmp_path, f'{HEADER}\n1,"two\nlines",3\n2,"b",4\n'.encode(), "b.csv")
    zipped = _write(tmp_path, gzip.compress(plain.read_bytes()), "c.csv.gz")
    plans = plan_csv_files([str(plain), str(quoted), str(zipped)])
    expected = [(str(plain), i + 2, rows[i].encode()) for i in range(400)]
    expected += [(str(zipped), i + 2, rows[i].encode()) for i in range(400)]
    expected += [(str(quoted), 2, b'1,"two\nlines",3'), (str(quoted), 4, b'2,"b",4')]
    with TestPipeline() as p:
        assert_that(p | ReadCsvRecords(plans), equal_to(expected))


def test_files_read_whole_are_spread_only_where_there_are_workers_to_spread_to():
    """The DirectRunner's shuffle holds every record in memory: with its one default worker a
    whole-read file's records go straight on (the scale benchmark: 4.3 GB -> 1.2 GB peak RSS)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.validate import one_local_worker

    assert one_local_worker(PipelineOptions([]))
    assert one_local_worker(PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=1"]))
    assert not one_local_worker(PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"]))
    assert not one_local_worker(PipelineOptions(["--runner=DataflowRunner"]))
    assert not one_local_worker(PipelineOptions(["--runner=PortableRunner", "--environment_type=LOOPBACK"]))
