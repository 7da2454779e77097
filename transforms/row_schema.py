"""Column types for CSV input: inferred from samples of every file, then every row conformed to them.

Parquet output needs one Arrow type per column before the first row is written, while a CSV
column's type is only known from its values. The first records of *every* file decide the types
(a header-only shard adds nothing; a shard with another type widens the column); a column is the
narrowest type whose canonical text is exactly every sampled value's text, else text:

=================================  ==============================================================
sampled values (unquoted, typed     column type
by :mod:`transforms.csv_records`)
=================================  ==============================================================
none (empty, header-only files)     string
any text (quoted, ``007``, ``-0``)  string: every value keeps the text it was written as
only ``True`` / ``False``           bool
only ints within int64              int64
ints beyond int64 (``2**70``)       decimal128(38, 0), or string past 38 digits
only floats (``0.5``, ``1e+20``)    float64
ints and floats (``1``, ``0.5``)    string (a float column would write ``1`` back as ``1.0``)
=================================  ==============================================================

A string column takes every value: a number's text is its canonical text, which is the text the
file holds. A value past the sample that does not fit a typed column is converted where that is
exact and what pandas reads (an int in a float64 column up to 2**53, an int64 value in a decimal
column); else its row becomes a ``bad_column_value`` error rather than a failed write.
Beam-free so it can be tested and reused on its own.
"""
from __future__ import annotations

import decimal
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from transforms.csv_records import canonical_text

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Digits a decimal128 column holds; longer ints make a string column.
DECIMAL_DIGITS = 38
WIDE_INT = pa.decimal128(DECIMAL_DIGITS, 0)
_FLOAT_EXACT_INT = 2**53


class ColumnValueError(ValueError):
    """A value does not fit its column's type."""


def _fits_decimal(value: int) -> bool:
    return abs(value) < 10**DECIMAL_DIGITS


def column_type(values: Iterable[Any]) -> pa.DataType:
    """The Arrow type of one CSV column from its sampled values (see the module's table)."""
    kinds: set[type] = set()
    low, high = 0, 0
    for value in values:
        if value is None or value == "":
            continue  # empty fields, and "" (how pandas writes NaN when quoting), decide nothing
        kind = type(value)
        kinds.add(kind)
        if kind is str:
            return pa.string()
        if kind is int:
            low, high = min(low, value), max(high, value)
    if not kinds:
        return pa.string()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        if INT64_MIN <= low and high <= INT64_MAX:
            return pa.int64()
        if _fits_decimal(low) and _fits_decimal(high):
            return WIDE_INT
        return pa.string()
    if kinds == {float}:
        return pa.float64()
    return pa.string()


def infer_csv_schema(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> pa.Schema:
    """Arrow types for CSV columns from sample rows (of every file: pass them all)."""
    return pa.schema(
        [pa.field(name, column_type(row[index] for row in rows)) for index, name in enumerate(columns)]
    )


def _conform(value: Any, arrow_type: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_string(arrow_type):
        return value if isinstance(value, str) else canonical_text(value)
    if value == "":
        return None
    if isinstance(value, bool):
        if pa.types.is_boolean(arrow_type):
            return value
    elif isinstance(value, int):
        if pa.types.is_int64(arrow_type) and INT64_MIN <= value <= INT64_MAX:
            return value
        if pa.types.is_decimal(arrow_type) and _fits_decimal(value):
            return decimal.Decimal(value)
        if pa.types.is_float64(arrow_type) and abs(value) <= _FLOAT_EXACT_INT:
            return float(value)
    elif isinstance(value, float):
        if pa.types.is_float64(arrow_type):
            return value
    raise ColumnValueError(
        f"{canonical_text(value)!r} is not a {arrow_type} value (the column's type was decided by "
        "the first records of every file)"
    )


def conform_row(row: Mapping[str, Any], schema: pa.Schema, skip: str) -> dict[str, Any]:
    """The row with each value (but column ``skip``) in its column's type; else ColumnValueError."""
    out = dict(row)
    for field in schema:
        if field.name == skip:
            continue
        try:
            out[field.name] = _conform(row.get(field.name), field.type)
        except ColumnValueError as error:
            raise ColumnValueError(f"column {field.name!r}: {error}") from None
    return out
