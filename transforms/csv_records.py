"""CSV records read from bytes, typed losslessly, where a broken record is reported instead of raised.

A file is read as bytes and cut into records at line ends that are not inside quotes; each record
is then decoded with the file's encoding (:class:`CsvDialect`), so a record that does not decode
is one error row (``bad_encoding``, raw bytes kept), never text silently replaced.

Typing never rewrites text. A quoted field is a ``str`` (``QUOTE_NONNUMERIC`` and ``QUOTE_ALL``
writers quote text). An unquoted field is an ``int``, ``float`` or ``bool`` only when its text is
the canonical text of that value (what ``str()`` / ``repr()`` write back), so the value gives the
text back exactly: ``1``, ``-5``, ``0.5``, ``1e+20``, ``True``. Anything else stays the ``str`` it
was written as: ``007``, ``-0``, ``1.10``, ``1e3``, ``true``, ``+1``. An empty unquoted field is
``None``. This fits pandas' default (``QUOTE_MINIMAL``) files as well as the original producer's.

Records may span lines (a quoted cell holding newlines), up to ``max_record_bytes`` bytes. A record
whose quotes never balance within that bound (or before the end of the file), or whose fields do
not parse, comes out as a :class:`BrokenRecord` holding its raw text, and reading resumes on the
next physical line, so one truncated write costs one row, not the rest of the file. The look-ahead
is linear: every line a failed look-ahead went over has an even number of quotes, so each of them
is a record on its own and is never scanned again.
Beam-free so it can be tested and reused on its own.
"""
from __future__ import annotations

import codecs
import decimal
import re
from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral, Real
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from transforms.crop_codec import DEFAULT_MAX_PIXELS, cell_chars_bound
from transforms.reasons import Reason

_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_BOOLS = {"True": True, "False": False}
UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

#: Room for the pass-through columns of one record, beside the largest valid image cell.
OTHER_COLUMNS_BYTES = 16 * 1024 * 1024

#: Delimiter names accepted besides a single character (a shell makes ``'\t'`` two characters).
DELIMITER_NAMES = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
TAB_SUFFIXES = (".tsv", ".tsv.gz", ".tsv.bz2", ".tsv.zst", ".tab")


def record_bytes_bound(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Longest record read: the longest valid image cell for ``max_pixels`` plus room for the rest."""
    return cell_chars_bound(max_pixels) + OTHER_COLUMNS_BYTES


DEFAULT_MAX_RECORD_BYTES = record_bytes_bound(DEFAULT_MAX_PIXELS)

Value = Union[str, int, float, bool, None]


def parse_delimiter(text: Optional[str]) -> Optional[str]:
    """``--csv_delimiter`` as one character (None: by file extension); ValueError when unusable."""
    if text is None or text == "":
        return None
    delimiter = DELIMITER_NAMES.get(text.lower(), text)
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(
            f"--csv_delimiter {text!r} is not usable: give one character other than a quote or a "
            "line end (or tab, comma, semicolon, pipe)"
        )
    return delimiter


def check_encoding(name: str) -> str:
    """The codec's canonical name; ValueError for an unknown or not ASCII-compatible encoding."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise ValueError(f"--encoding {name!r} is not a Python codec (e.g. utf-8, latin-1, cp1252)") from None
    canonical = "utf-8" if info.name in ("utf-8", "utf-8-sig") else info.name
    probe = '",;\t|\r\n azAZ09.-_{}'
    try:
        ascii_compatible = probe.encode(canonical) == probe.encode("ascii")
    except (UnicodeError, LookupError):
        ascii_compatible = False
    if not ascii_compatible:
        raise ValueError(
            f"--encoding {name!r} is not ASCII-compatible (quotes and line ends are not single "
            "bytes); convert the file to UTF-8, e.g. iconv -f UTF-16 -t UTF-8"
        )
    return canonical


@dataclass(frozen=True)
class CsvDialect:
    """How CSV bytes are read: delimiter (None: tab for .tsv, else comma), encoding, record bound."""

    delimiter: Optional[str] = None
    encoding: str = "utf-8"
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    @classmethod
    def from_options(
        cls, delimiter: Optional[str] = None, encoding: Optional[str] = None, max_pixels: Optional[int] = None
    ) -> "CsvDialect":
        """From the command line's values; ValueError naming the option when one is unusable."""
        bound = record_bytes_bound(max_pixels) if max_pixels and max_pixels > 0 else DEFAULT_MAX_RECORD_BYTES
        return cls(parse_delimiter(delimiter), check_encoding(encoding or "utf-8"), bound)

    def delimiter_for(self, path: str) -> str:
        if self.delimiter is not None:
            return self.delimiter
        return "\t" if path.lower().endswith(TAB_SUFFIXES) else ","

    def for_path(self, path: str) -> "CsvDialect":
        """This dialect with the delimiter resolved for ``path``."""
        return CsvDialect(self.delimiter_for(path), self.encoding, self.max_record_bytes)

    def describe(self) -> str:
        shown = {"\t": "tab", ",": "comma ','", ";": "semicolon ';'"}.get(self.delimiter or ",", repr(self.delimiter))
        return f"read with delimiter {shown} (--csv_delimiter) and encoding {self.encoding} (--encoding)"


DEFAULT_DIALECT = CsvDialect()  # comma, or tab for .tsv once resolved with for_path


@dataclass(frozen=True)
class Record:
    """A parsed data record: typed values in header order, and where it started."""

    values: list[Value]
    line_number: int


@dataclass(frozen=True)
class BrokenRecord:
    """A record that could not be read: its raw text (and bytes when they did not decode), why."""

    raw: str
    line_number: int
    detail: str
    reason: str = Reason.BAD_CSV_RECORD.value
    raw_bytes: Optional[bytes] = None


class CsvHeaderError(ValueError):
    """The file's first record is not a usable header."""


def canonical_text(value: Any) -> Optional[str]:
    """The text a typed value is written back as (None for a missing value)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, Real):
        return repr(float(value))
    return str(value)


def _unquoted_value(text: str) -> Value:
    """An unquoted field: typed only when the value's canonical text is exactly ``text``."""
    if text == "":
        return None
    if _INT.fullmatch(text):
        return text if text == "-0" else int(text)
    if text in _BOOLS:
        return _BOOLS[text]
    if text[0] in "-.0123456789in":
        try:
            number = float(text)
        except ValueError:
            return text
        if repr(number) == text:
            return number
    return text


@lru_cache(maxsize=16)
def _field_pattern(delimiter: str) -> re.Pattern:
    # a quoted string (quotes doubled inside) or an unquoted run without delimiter, quote or newline
    d = re.escape(delimiter)
    return re.compile(rf'"([^"]*(?:""[^"]*)*)"|([^{d}"\r\n]*)')


def _quoted_field_end(text: str, start: int, delimiter: str) -> Optional[tuple[int, bool]]:
    """For the quoted cell opening at ``start``: (the index after its closing quote, whether it
    holds doubled quotes), when a delimiter or the end follows it; else None, and the regular
    expression decides (and words the error). Scans with ``str.find``, many times faster than the
    expression on the long hex cells: the same cells, the same values."""
    pos, doubled = start + 1, False
    while True:
        quote = text.find('"', pos)
        if quote < 0:
            return None
        if text.startswith('"', quote + 1):
            pos, doubled = quote + 2, True
            continue
        after = quote + 1
        return (after, doubled) if after == len(text) or text.startswith(delimiter, after) else None


def split_record(text: str, delimiter: str = ",") -> list[Value]:
    """Split one record's text (without its line ending) into typed values.

    Raises ValueError when the text is not a well-formed CSV record.
    """
    field = _field_pattern(delimiter)
    values: list[Value] = []
    pos, end = 0, len(text)
    while True:
        quoted_to = _quoted_field_end(text, pos, delimiter) if text.startswith('"', pos) else None
        if quoted_to is not None:  # the common well-formed quoted cell, found with str.find
            cell = text[pos + 1 : quoted_to[0] - 1]
            values.append(cell.replace('""', '"') if quoted_to[1] else cell)
            pos = quoted_to[0]
        else:
            match = field.match(text, pos)
            assert match is not None  # the unquoted branch matches the empty string
            quoted, bare = match.group(1), match.group(2)
            values.append(quoted.replace('""', '"') if quoted is not None else _unquoted_value(bare))
            pos = match.end()
        if pos == end:
            return values
        if text[pos] != delimiter:
            raise ValueError(f"unexpected {text[pos]!r} at column {pos + 1}")
        pos += 1


def _strip_line_end(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n") or data.endswith(b"\r"):
        return data[:-1]
    return data


def _as_bytes(lines: Iterable[Union[bytes, str]], encoding: str) -> Iterator[bytes]:
    """Byte lines; text lines (a text stream, a list of str) are encoded back with ``encoding``."""
    for line in lines:
        yield line.encode(encoding, "surrogateescape") if isinstance(line, str) else line


def record_check(n_fields: int, dialect: "CsvDialect") -> Callable[[bytes], bool]:
    """Whether a record's bytes (line ends inside quotes included) are one well-formed record of
    ``n_fields`` fields: what a quoted cell spanning lines must be (:func:`iter_raw_records`)."""
    delimiter = dialect.delimiter or ","

    def check(raw: bytes) -> bool:
        # delimiter and quote are ASCII, so a bad byte elsewhere cannot move them: replace it
        try:
            return len(split_record(raw.decode(dialect.encoding, errors="replace"), delimiter)) == n_fields
        except ValueError:
            return False

    return check


def iter_raw_records(
    lines: Iterable[Union[bytes, str]],
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    encoding: str = "utf-8",
    accept: Optional[Callable[[bytes], bool]] = None,
) -> Iterator[tuple[int, bytes, bool]]:
    """Group physical lines (with their endings) into records: ``(line_number, raw, balanced)``.

    A line with an odd number of quotes opens a quoted cell that continues on the next lines. If
    the quotes do not balance within ``max_record_bytes`` (or before the end of the file), or the
    lines up to where they balance are not one record (``accept``, e.g. :func:`record_check`: a
    quote left open on one line would otherwise take every record up to the next odd line with
    it), the first line alone is given back as unbalanced and grouping restarts on the line after
    it. Without ``accept`` the lines looked at on the way each hold an even number of quotes, so
    they come out as one-line records without a second look-ahead: linear time. With it, a
    rejected span's last line (odd) starts a look-ahead of its own: each line is looked at at most
    twice more.
    """
    pending: list[bytes] = []  # lines read ahead, not yet given out (at most max_record_bytes)
    head = 0  # index of the next line to give out in ``pending``
    source = _as_bytes(lines, encoding)
    line_number = 0

    def fetch() -> bool:
        try:
            pending.append(next(source))
            return True
        except StopIteration:
            return False

    while True:
        if head == len(pending):
            pending.clear()
            head = 0
            if not fetch():
                return
        first = pending[head]
        line_number += 1
        quotes = first.count(b'"')
        if quotes % 2 == 0:
            head += 1
            yield line_number, _strip_line_end(first), True
            continue
        size, taken = len(first), 1
        while quotes % 2 == 1 and size <= max_record_bytes:
            if head + taken == len(pending) and not fetch():
                break
            line = pending[head + taken]
            quotes += line.count(b'"')
            size += len(line)
            taken += 1
        raw = b"".join(pending[head : head + taken]) if quotes % 2 == 0 and size <= max_record_bytes else None
        if raw is not None and (accept is None or accept(_strip_line_end(raw))):
            head += taken
            yield line_number, _strip_line_end(raw), True
            line_number += taken - 1
        else:
            head += 1
            yield line_number, _strip_line_end(first), False
        if head > 1024 and head * 2 > len(pending):
            del pending[:head]
            head = 0


def decode_record(raw: bytes, encoding: str) -> str:
    """A record's text; UnicodeDecodeError when its bytes are not valid ``encoding``."""
    return raw.decode(encoding)


def _shown(raw: bytes, encoding: str) -> str:
    return raw.decode(encoding, errors="replace")


def read_header(lines: Iterable[Union[bytes, str]], dialect: CsvDialect = DEFAULT_DIALECT) -> list[str]:
    """The column names from a file's first record; consumes exactly the header's lines.

    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is stripped; one in a file read with another
    encoding is refused, as is a UTF-16 one, rather than read as part of the first name.
    """
    delimiter = dialect.delimiter or ","
    where = dialect.describe()
    source = iter(_as_bytes(lines, dialect.encoding))
    try:
        first = next(source)
    except StopIteration:
        raise CsvHeaderError("the file is empty: no header") from None
    bom = ""
    if first.startswith(UTF8_BOM):
        if dialect.encoding != "utf-8":
            raise CsvHeaderError(
                f"the file starts with a UTF-8 byte-order mark but is {where}: it is UTF-8 "
                "(e.g. Excel's 'CSV UTF-8'); pass --encoding utf-8"
            )
        first = first[len(UTF8_BOM):]
        bom = " (after the UTF-8 byte-order mark at the start of the file, which is stripped)"
    elif first.startswith(_UTF16_BOMS):
        raise CsvHeaderError("the file starts with a UTF-16 byte-order mark: convert it to UTF-8")

    def chained() -> Iterator[bytes]:
        yield first
        yield from source

    records = iter_raw_records(chained(), max_record_bytes=dialect.max_record_bytes)
    for _, raw, balanced in records:
        try:
            if not balanced:
                raise ValueError("unbalanced quotes")
            try:
                text = decode_record(raw, dialect.encoding)
            except UnicodeDecodeError as error:
                raise ValueError(f"not valid {dialect.encoding}: {error.reason} at byte {error.start}") from None
            names = split_record(text, delimiter)
        except ValueError as error:
            raise CsvHeaderError(f"unreadable CSV header{bom}, {where}: {error}") from None
        if any(not isinstance(name, str) or name == "" for name in names):
            shown = [canonical_text(n) for n in names]
            raise CsvHeaderError(f"CSV header{bom} has empty column names: {shown!r}, {where}")
        if len(set(names)) != len(names):
            raise CsvHeaderError(f"CSV header{bom} repeats a column name: {names!r}, {where}")
        return [str(name) for name in names]
    raise CsvHeaderError("the file is empty: no header")


def iter_records(
    lines: Iterable[Union[bytes, str]], n_fields: int, dialect: CsvDialect = DEFAULT_DIALECT, *,
    max_record_bytes: Optional[int] = None,
) -> Iterator[Union[Record, BrokenRecord]]:
    """Parse data records (the header already consumed) of ``n_fields`` fields each.

    Blank lines are skipped, as pandas and the csv module do. Line numbers count from the first
    line given, so a caller that consumed a one-line header passes ``lines`` and adds 1.
    """
    delimiter = dialect.delimiter or ","
    bound = max_record_bytes or dialect.max_record_bytes
    records = iter_raw_records(lines, max_record_bytes=bound, encoding=dialect.encoding,
                               accept=record_check(n_fields, dialect))
    for line_number, raw, balanced in records:
        if raw == b"":
            continue
        try:
            text = decode_record(raw, dialect.encoding)
        except UnicodeDecodeError as error:
            detail = (
                f"not valid {dialect.encoding} ({error.reason} at byte {error.start} of the record); "
                "the raw bytes are kept in raw_base64 (choose the file's encoding with --encoding)"
            )
            yield BrokenRecord(_shown(raw, dialect.encoding), line_number, detail, Reason.BAD_ENCODING.value, raw)
            continue
        if not balanced:
            detail = (f"a quoted field is never closed: no record of {n_fields} fields ends with its quote "
                      f"within {bound} bytes or before the end of the file")
            yield BrokenRecord(text, line_number, detail)
            continue
        try:
            values = split_record(text, delimiter)
        except ValueError as error:
            yield BrokenRecord(text, line_number, f"malformed CSV record: {error}")
            continue
        if len(values) != n_fields:
            detail = f"expected {n_fields} fields as in the header, found {len(values)} ({dialect.describe()})"
            yield BrokenRecord(text, line_number, detail)
            continue
        yield Record(values, line_number)


def format_value(value: Any) -> str:
    """One field as the original producer writes it (``QUOTE_NONNUMERIC``)."""
    if value is None:
        return '""'
    if isinstance(value, (bool, Integral, decimal.Decimal, Real)) and not isinstance(value, str):
        return str(canonical_text(value))
    text = str(value)
    return '"' + text.replace('"', '""') + '"'


def format_record(values: Sequence[Any]) -> str:
    """One record (no line ending) with strings quoted and numbers bare, like pandas writes it."""
    return ",".join(format_value(value) for value in values)
