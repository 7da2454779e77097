"""Column types for CSV input: inferred from a sample, then every row conformed to them.

Parquet output needs one Arrow type per column before the first row is written, while a CSV
column's type is only known from its values. A sample of the first file decides the types
(the narrowest type that holds every sampled value); every row is then conformed, and a value
that does not fit becomes a ``bad_column_value`` error row rather than a failed write.
Beam-free so it can be tested and reused on its own.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pyarrow as pa


class ColumnValueError(ValueError):
    """A value does not fit its column's type."""


def infer_csv_schema(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> pa.Schema:
    """Arrow types for CSV columns from sample values.

    Empty fields and empty quoted strings (how pandas writes NaN) do not decide a type; a
    column with no other value, or with any text, is a string column.
    """
    fields = []
    for index, name in enumerate(columns):
        kinds = {type(row[index]) for row in rows if row[index] not in (None, "")}
        if not kinds or str in kinds:
            arrow_type = pa.string()
        elif kinds == {bool}:
            arrow_type = pa.bool_()
        elif kinds == {int}:
            arrow_type = pa.int64()
        elif kinds <= {int, float}:
            arrow_type = pa.float64()
        else:
            arrow_type = pa.string()
        fields.append(pa.field(name, arrow_type))
    return pa.schema(fields)


def _conform(value: Any, arrow_type: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_string(arrow_type):
        return value if isinstance(value, str) else str(value)
    if value == "":
        return None
    if pa.types.is_boolean(arrow_type) and isinstance(value, bool):
        return value
    if pa.types.is_int64(arrow_type) and isinstance(value, int) and not isinstance(value, bool):
        if -(2**63) <= value < 2**63:
            return value
    if pa.types.is_float64(arrow_type) and isinstance(value, (int, float)):
        if not isinstance(value, bool):
            return float(value)
    raise ColumnValueError(f"{value!r} is not a {arrow_type} value")


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
