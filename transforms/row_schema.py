"""Column types for CSV input: inferred from samples of every file; a later value widens its column.

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

A value past the sample that does not fit its column (text in an int64 column, ``2**70``, ``1`` in
a float64 column) keeps its row: the column is *widened* (:func:`widen`: int64 to decimal where
the value is a wider int, else to string), exactly as if the value had been in the sample. Every
typed value's canonical text is the text the file holds, so widening never changes a value.
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


#: The types a CSV column can have, by name (how a widening travels between workers).
COLUMN_TYPES: dict[str, pa.DataType] = {
    str(t): t for t in (pa.string(), pa.bool_(), pa.int64(), WIDE_INT, pa.float64())
}


def widen(column: pa.DataType, value: pa.DataType) -> pa.DataType:
    """The narrowest column type that holds both types' values with their text unchanged."""
    if column == value:
        return column
    if {column, value} == {pa.int64(), WIDE_INT}:
        return WIDE_INT
    return pa.string()


_MISFIT = object()


def _conform(value: Any, arrow_type: pa.DataType) -> Any:
    """``value`` in ``arrow_type``, or ``_MISFIT`` where the type cannot hold its text exactly."""
    if value is None:
        return None
    if pa.types.is_string(arrow_type):
        return value if isinstance(value, str) else canonical_text(value)
    if value == "":
        return None  # "" (how pandas writes NaN when quoting) is a missing value of a typed column
    if isinstance(value, bool):
        return value if pa.types.is_boolean(arrow_type) else _MISFIT
    if isinstance(value, int):
        if pa.types.is_int64(arrow_type) and INT64_MIN <= value <= INT64_MAX:
            return value
        if pa.types.is_decimal(arrow_type) and _fits_decimal(value):
            return decimal.Decimal(value)
        return _MISFIT
    if isinstance(value, float) and pa.types.is_float64(arrow_type):
        return value
    return _MISFIT


def conform_row(
    row: Mapping[str, Any], schema: pa.Schema, skip: str
) -> tuple[dict[str, Any], dict[str, pa.DataType]]:
    """The row with each value (but column ``skip``) in its column's type, and the columns whose
    value did not fit, each with the type it widens the column to (that value is left as read)."""
    out = dict(row)
    widened: dict[str, pa.DataType] = {}
    for field in schema:
        if field.name == skip:
            continue
        value = row.get(field.name)
        conformed = _conform(value, field.type)
        if conformed is _MISFIT:
            widened[field.name] = widen(field.type, column_type([value]))
        else:
            out[field.name] = conformed
    return out, widened


def widened_schema(schema: pa.Schema, widened: Mapping[str, pa.DataType]) -> pa.Schema:
    """``schema`` with the widened columns' types (each joined with its planned type)."""
    for name, arrow_type in widened.items():
        index = schema.get_field_index(name)
        field = schema.field(index)
        schema = schema.set(index, field.with_type(widen(field.type, arrow_type)))
    return schema


def conform_to(value: Any, arrow_type: pa.DataType) -> Any:
    """A value already in a narrower column type, in the widened ``arrow_type`` (exact by
    :func:`widen`'s construction)."""
    conformed = _conform(int(value) if isinstance(value, decimal.Decimal) else value, arrow_type)
    if conformed is _MISFIT:
        raise ValueError(f"{value!r} does not widen to {arrow_type}")
    return conformed
