"""Error records: one per row that did not become features, carrying everything needed to redo it.

A record is a plain dict so it serialises to one JSON line: ``reason`` (a stable code from
:mod:`transforms.reasons`), ``detail`` (a human message) and either ``row`` (the row's original
columns, image cell unchanged) or ``raw_line`` (the text of a CSV record that did not parse).
"""
from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
from typing import Any, Mapping, Optional

#: The tag of every transform's error output.
ERRORS_TAG = "errors"


def error_record(
    reason: str,
    detail: str,
    *,
    row: Optional[Mapping[str, Any]] = None,
    raw_line: Optional[str] = None,
    source: Optional[str] = None,
    line: Optional[int] = None,
) -> dict[str, Any]:
    """The error record of one row (``row``) or one unparseable CSV record (``raw_line``)."""
    record: dict[str, Any] = {"reason": str(reason), "detail": detail}
    if row is not None:
        record["row"] = dict(row)
    if raw_line is not None:
        record["raw_line"] = raw_line
    if source is not None:
        record["source"] = source
    if line is not None:
        record["line"] = line
    return record


def _jsonable(value: Any) -> Any:
    """JSON for the odd types a Parquet column can hold, losing nothing that matters."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


def to_json_line(record: Mapping[str, Any]) -> str:
    """One error record as strict JSON (NaN becomes null, so any JSON reader accepts it)."""
    return json.dumps(_without_nan(record), default=_jsonable, ensure_ascii=False)
