"""CSV files as a splittable Beam source: one big file spreads over every worker.

Planning (:func:`plan_csv_files`, before the job starts) scans each uncompressed file once with a
vectorised byte scan (numpy over large chunks, files in parallel threads). It answers one question
per file: *is every physical line a whole record?* That holds when every line has an even number of
``"`` characters (no quoted cell spans lines, no quote is left open) and no line ends in a lone
``\\r``. Such a file is **split by byte ranges** the way Beam's own text source is: each range
starts at the first line that *begins* inside it and claims every line start with ``try_claim``, so a
record is read by exactly one range, initial splits are made by the runner and Dataflow can
rebalance dynamically. The same scan keeps a sparse line index (the line number of a line start
about every MiB), so a range that starts in the middle of a file knows its line numbers after
counting the newlines of at most one index step.

A file with an odd-quote line (a quoted cell holding a newline, or a broken quote) is read whole by
one worker with the record logic of :mod:`transforms.csv_records`, which handles both; so is every
compressed file (``.gz``, ``.bz2``, ``.zst``: no random access). Their records are then
redistributed (:class:`~apache_beam.transforms.util.Reshuffle`) before the parse and decode steps,
so the expensive work still spreads. One log line per such file says why.

What the source emits, and what crosses a shuffle, is the compact :data:`RawRecord`: ``(source
path, line number, record bytes)`` with an explicit tuple coder (no pickled dicts, no decoded
pixels). Records are decoded (``--encoding``) and become typed row dicts afterwards, in
:func:`parse_raw_record`, so a record in another encoding is one ``bad_encoding`` row.
"""
from __future__ import annotations

import dataclasses

import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple, Union

import apache_beam as beam
import numpy as np
from apache_beam.coders import coders
from apache_beam.io import iobase
from apache_beam.io.concat_source import ConcatSource
from apache_beam.io.filebasedsource import FileBasedSource
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import USER_LOG, csv_records

_LOG = logging.getLogger(__name__)

#: ``(source path, 1-based line number where the record starts, record bytes without its line
#: ending)``: what the CSV source emits and what crosses a shuffle.
RawRecord = Tuple[str, int, bytes]
RAW_RECORD_CODER = coders.TupleCoder(
    [coders.StrUtf8Coder(), coders.VarIntCoder(), coders.BytesCoder()]
)

#: Bytes read per step of the planning scan (one numpy pass each).
SCAN_CHUNK_BYTES = 8 << 20
#: A file is scanned in segments of this size, by SCAN_THREADS threads.
SCAN_SEGMENT_BYTES = 64 << 20
SCAN_THREADS = 4
#: Distance between entries of a file's line index, at least; see :func:`index_step`.
MIN_INDEX_STEP = 1 << 20
#: A file's line index has at most this many entries (it travels with every split of the file).
MAX_INDEX_ENTRIES = 4096
_QUOTE, _LF, _CR = ord('"'), ord("\n"), ord("\r")


class _RawReader(io.RawIOBase):
    """A read-only file object (e.g. Beam's ``CompressedFile``) as a proper ``io`` raw stream."""

    def __init__(self, stream):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def binary_stream(stream) -> io.BufferedIOBase:
    """Any file object ``FileSystems.open`` returns, as an ``io`` buffered binary stream.

    Beam's ``CompressedFile`` (``.gz``, ``.bz2``, ``.zst``) lacks ``readable``/``writable``, so
    ``io.TextIOWrapper`` refuses it; this adapter makes it (and any other stream) usable.
    """
    if isinstance(stream, io.BufferedIOBase) and hasattr(stream, "writable"):
        return stream
    return io.BufferedReader(_RawReader(stream), buffer_size=1 << 20)


def is_compressed(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


# --------------------------------------------------------------------------------------------
# Planning: one vectorised scan per file


@dataclass(frozen=True)
class CsvFilePlan:
    """How one CSV file is read: split by lines, or whole (``whole_reason`` says why).

    ``data_start`` is the byte offset of the line after the header; ``index_offsets[i]`` is the
    byte offset of a line start whose 1-based line number is ``index_lines[i]`` (ascending; the
    first entry is ``data_start``). Both are only set for a file split by lines.
    """

    path: str
    size: int
    whole_reason: Optional[str] = None
    data_start: int = 0
    index_offsets: Tuple[int, ...] = ()
    index_lines: Tuple[int, ...] = ()

    @property
    def splittable(self) -> bool:
        return self.whole_reason is None


def index_step(size: int) -> int:
    """Bytes between line-index entries: 1 MiB, more for files over 4 GiB (bounded index)."""
    return max(MIN_INDEX_STEP, -(-size // MAX_INDEX_ENTRIES))


@dataclass(frozen=True)
class _Segment:
    """What the scan of one byte segment of a file found, before knowing what precedes it."""

    quotes: int  # '"' in the segment
    newlines: int  # '\n' in the segment
    first_odd: tuple[Optional[int], Optional[int]]  # first newline (index in the segment) at
    # which the quote count is odd, if the quotes before the segment were even / odd
    first_odd_at: tuple[Optional[int], Optional[int]]  # the byte offsets of those newlines
    lone_cr_at: Optional[int]  # offset of the first '\r' not followed by '\n' inside the segment
    first_byte: int
    last_byte: int
    entries: tuple[tuple[int, int], ...]  # (line start, index of the newline before it)
    first_start: Optional[int]  # the segment's first line start (an entry candidate)
    last_start: Optional[int]


def _scan_segment(path: str, begin: int, end: int, step: int, chunk_bytes: int) -> _Segment:
    quotes = newlines = 0
    first_odd: list[Optional[int]] = [None, None]
    first_odd_at: list[Optional[int]] = [None, None]
    lone_cr_at: Optional[int] = None
    first_byte = last_byte = -1
    entries: list[tuple[int, int]] = []
    first_start = last_start = None
    previous_cr = False
    position = begin
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        stream.seek(begin)
        while position < end:
            chunk = stream.read(min(chunk_bytes, end - position))
            if not chunk:
                break
            data = np.frombuffer(chunk, dtype=np.uint8)
            if first_byte < 0:
                first_byte = int(data[0])
            quote_at = np.flatnonzero(data == _QUOTE)
            newline_at = np.flatnonzero(data == _LF)
            if len(newline_at):
                odd = (quotes + np.searchsorted(quote_at, newline_at)) & 1
                for parity in (0, 1):
                    hits = odd != parity  # odd overall when the prefix parity is ``parity``
                    if first_odd[parity] is None and hits.any():
                        first_odd[parity] = newlines + int(np.argmax(hits))
                        first_odd_at[parity] = position + int(newline_at[np.argmax(hits)])
                starts = newline_at + (position + 1)
                buckets = (starts + (step - 1)) // step  # entry: first line start at or after k * step
                before = (last_start + step - 1) // step if last_start is not None else -1
                keep = np.flatnonzero(buckets > np.concatenate(([before], buckets[:-1])))
                entries += [(int(starts[i]), newlines + int(i)) for i in keep]
                if first_start is None:
                    first_start = int(starts[0])
                last_start = int(starts[-1])
            if lone_cr_at is None:
                cr_at = np.flatnonzero(data == _CR)
                inner = cr_at[cr_at + 1 < len(data)]
                lone = inner[data[inner + 1] != _LF]
                if previous_cr and data[0] != _LF:
                    lone_cr_at = position - 1
                elif len(lone):
                    lone_cr_at = position + int(lone[0])
            previous_cr = bool(data[-1] == _CR)
            quotes += len(quote_at)
            newlines += len(newline_at)
            position += len(chunk)
            last_byte = int(data[-1])
    return _Segment(quotes, newlines, (first_odd[0], first_odd[1]), (first_odd_at[0], first_odd_at[1]),
                    lone_cr_at, first_byte, last_byte, tuple(entries), first_start, last_start)


def scan_csv_file(
    path: str,
    size: Optional[int] = None,
    chunk_bytes: int = SCAN_CHUNK_BYTES,
    segment_bytes: int = SCAN_SEGMENT_BYTES,
) -> CsvFilePlan:
    """Plan one file: compressed or with an odd-quote / lone-CR line -> read whole, else split.

    A line is balanced when the running count of ``"`` is even at its ``\n`` (then every line
    before it was). Segments of the file are scanned in parallel threads (remote storage reads
    faster that way), then combined in order; the scan stops at the first odd-quote line.
    """
    if size is None:
        size = FileSystems.match([_literal_pattern(path)])[0].metadata_list[0].size_in_bytes
    if is_compressed(path):
        kind = CompressionTypes.detect_compression_type(path)
        return CsvFilePlan(path, size, f"compressed ({kind}): no random access")
    step = index_step(size)
    bounds = list(range(0, size, max(1, segment_bytes))) + [size]
    offsets: list[int] = []
    lines: list[int] = []
    parity = newlines = 0
    last_start: Optional[int] = None
    last_byte = -1
    odd_quote = "line {} has an odd number of '\"' (a quoted cell spans lines, or a quote is never closed)"
    lone_cr = "a line ends in a lone carriage return"
    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        futures = [pool.submit(_scan_segment, path, a, b, step, chunk_bytes) for a, b in zip(bounds, bounds[1:])]
        try:
            for begin, future in zip(bounds, futures):
                seg = future.result()
                if seg.first_byte < 0:
                    continue  # nothing read (the file shrank since it was listed)
                # whichever comes first in the file decides the reason
                cr_at = begin - 1 if (last_byte == _CR and seg.first_byte != _LF) else seg.lone_cr_at
                odd_at = seg.first_odd_at[parity]
                if odd_at is not None and (cr_at is None or odd_at < cr_at):
                    return CsvFilePlan(path, size, odd_quote.format(newlines + seg.first_odd[parity] + 1))
                if cr_at is not None:
                    return CsvFilePlan(path, size, lone_cr)
                for offset, newline in seg.entries:
                    same_bucket = (
                        offset == seg.first_start and last_start is not None
                        and (offset + step - 1) // step == (last_start + step - 1) // step
                    )
                    if not same_bucket:
                        offsets.append(offset)
                        lines.append(newlines + newline + 2)  # the line after that newline
                parity = (parity + seg.quotes) & 1
                newlines += seg.newlines
                last_start = seg.last_start if seg.last_start is not None else last_start
                last_byte = seg.last_byte
        finally:
            for future in futures:
                future.cancel()
    if last_byte == _CR:
        return CsvFilePlan(path, size, lone_cr)
    if parity:  # the last line has no newline and an odd number of quotes
        return CsvFilePlan(path, size, odd_quote.format(newlines + 1))
    if not offsets:  # only a header line, no data
        offsets, lines = [size], [2]
    return CsvFilePlan(path, size, None, offsets[0], tuple(offsets), tuple(lines))


def plan_csv_files(files: Sequence[str]) -> tuple[CsvFilePlan, ...]:
    """Plans for every file (scanned in parallel threads); one log line per file read whole."""
    sizes = {
        m.path: m.size_in_bytes
        for r in FileSystems.match([_literal_pattern(f) for f in files])
        for m in r.metadata_list
    }
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(files)))) as pool:
        plans = tuple(pool.map(lambda path: scan_csv_file(path, sizes[path]), files))
    for plan in plans:
        if not plan.splittable:
            USER_LOG.info(
                "%s: read whole by one worker: %s",
                plan.path, plan.whole_reason,
            )
    return plans


def _literal_pattern(path: str) -> str:
    """A path as a Beam match pattern that matches only itself (glob characters escaped)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


# --------------------------------------------------------------------------------------------
# The source


class CsvFileSource(FileBasedSource):
    """One CSV file as :data:`RawRecord` s, split by byte ranges when its plan allows."""

    def __init__(self, plan: CsvFilePlan, dialect: csv_records.CsvDialect = csv_records.DEFAULT_DIALECT,
                 min_bundle_size: int = 0, n_fields: Optional[int] = None):
        super().__init__(
            _literal_pattern(plan.path),
            min_bundle_size=min_bundle_size,
            splittable=plan.splittable,
            validate=False,
        )
        self._plan = plan
        self._dialect = dialect
        self._n_fields = n_fields  # the header's: how a record spanning lines is checked

    def default_output_coder(self) -> coders.Coder:
        return RAW_RECORD_CODER

    def estimate_size(self) -> int:
        return self._plan.size  # known from planning: no listing per file

    def output_type_hint(self):
        return RawRecord

    def read_records(self, file_name: str, range_tracker) -> Iterator[RawRecord]:
        if self._plan.splittable:
            return self._read_lines(file_name, range_tracker)
        return self._read_whole(file_name, range_tracker)

    def _read_whole(self, file_name: str, range_tracker) -> Iterator[RawRecord]:
        # Unsplittable: the tracker only needs increasing positions; record line numbers are.
        with self.open_file(file_name) as raw:
            stream = binary_stream(raw)
            dialect = self._dialect.for_path(file_name)
            accept = csv_records.record_check(self._n_fields, dialect) if self._n_fields else None
            records = csv_records.iter_raw_records(
                iter(stream.readline, b""), max_record_bytes=dialect.max_record_bytes, accept=accept
            )
            next(records, None)  # the header, checked at planning
            for line, data, _balanced in records:
                if not range_tracker.try_claim(line):
                    return
                if data:
                    # an unbalanced record is its first line alone: parsed, it stays unbalanced
                    yield file_name, line, data

    def _line_at(self, stream, start: int) -> tuple[int, int]:
        """``(offset, line number)`` of the first line that begins at or after ``start``;
        offset -1 when there is none."""
        plan = self._plan
        if start <= plan.data_start:
            return plan.data_start, plan.index_lines[0]
        # the last index entry at or before start - 1, then count newlines up to start - 1
        i = int(np.searchsorted(np.asarray(plan.index_offsets), start - 1, side="right")) - 1
        offset, line = plan.index_offsets[i], plan.index_lines[i]
        stream.seek(offset)
        remaining = start - 1 - offset
        while remaining > 0:
            block = stream.read(min(remaining, 1 << 20))
            if not block:
                return -1, 0
            line += block.count(b"\n")
            remaining -= len(block)
        stream.seek(start - 1)
        skipped = stream.readline()  # the rest of the line holding byte start - 1
        if not skipped.endswith(b"\n"):
            return -1, 0
        return start - 1 + len(skipped), line + 1

    def _read_lines(self, file_name: str, range_tracker) -> Iterator[RawRecord]:
        next_start = -1

        def split_points_unclaimed(stop_position: int) -> int:
            return 0 if stop_position <= next_start else iobase.RangeTracker.SPLIT_POINTS_UNKNOWN

        range_tracker.set_split_points_unclaimed_callback(split_points_unclaimed)
        with self.open_file(file_name) as stream:
            offset, line = self._line_at(stream, range_tracker.start_position())
            if offset < 0:
                return
            stream.seek(offset)
            next_start = offset
            while range_tracker.try_claim(offset):
                data = stream.readline()
                if not data:
                    return
                offset += len(data)
                next_start = offset
                data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
                if data:
                    yield file_name, line, data
                line += 1


def csv_source(plans: Sequence[CsvFilePlan], dialect: csv_records.CsvDialect = csv_records.DEFAULT_DIALECT,
               n_fields: Optional[int] = None) -> iobase.BoundedSource:
    """One source over the given files; each file's own plan travels only with its own splits."""
    sources = [CsvFileSource(p, dialect, n_fields=n_fields) for p in plans if p.size > 0]
    return sources[0] if len(sources) == 1 else ConcatSource(sources)


class ReadCsvRecords(beam.PTransform):
    """:data:`RawRecord` s of every planned file: split files read in ranges, whole-read files'
    records redistributed (compactly, with :data:`RAW_RECORD_CODER`) before anything else runs,
    unless ``spread`` is False (one worker: a local runner's shuffle would hold every record of
    those files in memory, for nothing to spread them to)."""

    def __init__(self, plans: Sequence[CsvFilePlan], dialect: csv_records.CsvDialect = csv_records.DEFAULT_DIALECT,
                 n_fields: Optional[int] = None, spread: bool = True):
        super().__init__()
        self._plans = tuple(plans)
        self._dialect = dialect
        self._n_fields = n_fields
        self._spread = spread  # False where one worker runs everything: a shuffle only costs memory

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        split = [p for p in self._plans if p.splittable]
        whole = [p for p in self._plans if not p.splittable]
        parts = []
        if split:
            parts.append(pbegin | "ReadSplit" >> beam.io.Read(csv_source(split, self._dialect)).with_output_types(RawRecord))
        if whole:
            records = pbegin | "ReadWhole" >> beam.io.Read(csv_source(whole, self._dialect, self._n_fields)).with_output_types(RawRecord)
            if self._spread:
                records = records | "Spread" >> beam.Reshuffle().with_output_types(RawRecord)
            parts.append(records)
        if not parts:
            return pbegin | "NoFiles" >> beam.Create([]).with_output_types(RawRecord)
        if len(parts) == 1:
            return parts[0]
        return tuple(parts) | "AllRecords" >> beam.Flatten().with_output_types(RawRecord)


# --------------------------------------------------------------------------------------------
# After the shuffle: record text to values


def parse_raw_record(
    record: RawRecord, n_fields: int, dialect: csv_records.CsvDialect = csv_records.DEFAULT_DIALECT
) -> Optional[Union[csv_records.Record, csv_records.BrokenRecord]]:
    """One record's bytes decoded and parsed by :mod:`transforms.csv_records` (``None`` for a
    blank record), with the record's own line number. ``dialect`` is resolved for the file."""
    _source, line, data = record
    for parsed in csv_records.iter_records([data], n_fields, dialect):
        if isinstance(parsed, csv_records.Record):
            return csv_records.Record(parsed.values, line)
        return dataclasses.replace(parsed, line_number=line)
    return None
