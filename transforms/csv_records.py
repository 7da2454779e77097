"""CSV records with quote-aware types, where a broken record is reported instead of raised.

The original producer writes tables with pandas and ``quoting=csv.QUOTE_NONNUMERIC``: strings are
quoted, numbers are not. Reading every field back as a string (or letting pandas guess, which turns
the camera ``"01"`` into ``1``) would change pass-through columns, so a field's type follows its
quoting: a quoted field is a ``str``; an unquoted one is an ``int``, ``float`` or ``bool`` when it is
written as one, ``None`` when empty, else a ``str``. Files written with minimal quoting read the same
way, except that an unquoted ``01`` stays the string ``"01"`` (no leading-zero ints).

Records may span lines (a quoted cell holding a newline). A record whose quotes never balance, or
whose fields do not parse, comes out as a :class:`BrokenRecord` holding its raw text, and reading
resumes on the next physical line, so one truncated write costs one row, not the rest of the file.
Beam-free so it can be tested and reused on its own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Iterable, Iterator, Sequence, Union

# One field: a quoted string (quotes doubled inside) or an unquoted run without , " or newlines.
_FIELD = re.compile(r'"([^"]*(?:""[^"]*)*)"|([^,"\r\n]*)')
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|-?inf|nan")
_BOOLS = {"True": True, "False": False, "true": True, "false": False}

#: How many physical lines one record may span before its first line is declared broken.
DEFAULT_MAX_RECORD_LINES = 64

Value = Union[str, int, float, bool, None]


@dataclass(frozen=True)
class Record:
    """A parsed data record: typed values in header order, and where it started."""

    values: list[Value]
    line_number: int


@dataclass(frozen=True)
class BrokenRecord:
    """A record that could not be parsed: its raw text and why."""

    raw: str
    line_number: int
    detail: str


class CsvHeaderError(ValueError):
    """The file's first record is not a usable header."""


def _unquoted_value(text: str) -> Value:
    if text == "":
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text in _BOOLS:
        return _BOOLS[text]
    return text


def split_record(text: str) -> list[Value]:
    """Split one record's text (without its line ending) into typed values.

    Raises ValueError when the text is not a well-formed CSV record.
    """
    values: list[Value] = []
    pos, end = 0, len(text)
    while True:
        match = _FIELD.match(text, pos)
        assert match is not None  # the unquoted branch matches the empty string
        quoted, bare = match.group(1), match.group(2)
        values.append(quoted.replace('""', '"') if quoted is not None else _unquoted_value(bare))
        pos = match.end()
        if pos == end:
            return values
        if text[pos] != ",":
            raise ValueError(f"unexpected {text[pos]!r} at column {pos + 1}")
        pos += 1


def _strip_line_end(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n") or text.endswith("\r"):
        return text[:-1]
    return text


def iter_raw_records(
    lines: Iterable[str], *, max_record_lines: int = DEFAULT_MAX_RECORD_LINES
) -> Iterator[tuple[int, str, bool]]:
    """Group physical lines (with their endings) into records: ``(line_number, text, balanced)``.

    A line with an odd number of quotes opens a quoted cell that continues on the next lines. If
    the quotes do not balance within ``max_record_lines`` lines (or before the end of the file),
    the first line alone is given back as unbalanced and grouping restarts on the line after it.
    """
    pending: list[str] = []  # lines read ahead but not yet assigned to a record
    source = iter(lines)
    line_number = 0  # number of the first line in ``pending``
    exhausted = False

    def fill(count: int) -> None:
        nonlocal exhausted
        while len(pending) < count and not exhausted:
            try:
                pending.append(next(source))
            except StopIteration:
                exhausted = True

    while True:
        fill(1)
        if not pending:
            return
        first = pending[0]
        line_number += 1
        if first.count('"') % 2 == 0:
            pending.pop(0)
            yield line_number, _strip_line_end(first), True
            continue
        quotes, taken = first.count('"'), 1
        while quotes % 2 == 1 and taken < max_record_lines:
            fill(taken + 1)
            if len(pending) <= taken:
                break
            quotes += pending[taken].count('"')
            taken += 1
        if quotes % 2 == 0:
            text = "".join(pending[:taken])
            del pending[:taken]
            yield line_number, _strip_line_end(text), True
            line_number += taken - 1
        else:
            pending.pop(0)
            yield line_number, _strip_line_end(first), False


def read_header(lines: Iterable[str]) -> list[str]:
    """The column names from a file's first record."""
    for _, text, balanced in iter_raw_records(lines):
        try:
            if not balanced:
                raise ValueError("unbalanced quotes")
            names = split_record(text)
        except ValueError as error:
            raise CsvHeaderError(f"unreadable CSV header: {error}") from None
        if any(not isinstance(name, str) or name == "" for name in names):
            raise CsvHeaderError(f"CSV header has empty or non-text column names: {names!r}")
        if len(set(names)) != len(names):
            raise CsvHeaderError(f"CSV header repeats a column name: {names!r}")
        return [str(name) for name in names]
    raise CsvHeaderError("the file is empty: no header")


def iter_records(
    lines: Iterable[str], n_fields: int, *, max_record_lines: int = DEFAULT_MAX_RECORD_LINES
) -> Iterator[Union[Record, BrokenRecord]]:
    """Parse data records (the header already consumed) of ``n_fields`` fields each.

    Blank lines are skipped, as pandas and the csv module do. Line numbers count from the first
    line given, so a caller that consumed a one-line header passes ``lines`` and adds 1.
    """
    records = iter_raw_records(lines, max_record_lines=max_record_lines)
    for line_number, text, balanced in records:
        if text == "":
            continue
        if not balanced:
            yield BrokenRecord(text, line_number, "a quoted field is never closed")
            continue
        try:
            values = split_record(text)
        except ValueError as error:
            yield BrokenRecord(text, line_number, f"malformed CSV record: {error}")
            continue
        if len(values) != n_fields:
            detail = f"expected {n_fields} fields as in the header, found {len(values)}"
            yield BrokenRecord(text, line_number, detail)
            continue
        yield Record(values, line_number)


def format_value(value: Any) -> str:
    """One field as the original producer writes it (``QUOTE_NONNUMERIC``)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return repr(float(value))
    text = str(value)
    return '"' + text.replace('"', '""') + '"'


def format_record(values: Sequence[Any]) -> str:
    """One record (no line ending) with strings quoted and numbers bare, like pandas writes it."""
    return ",".join(format_value(value) for value in values)
