"""The job's row accounting: the metrics namespace and every counter name, decided here once.

Each fact is counted by one step: ``rows_read`` by the reader of the input's kind (the CSV parse
step, which also sees the records that do not parse; the Parquet range reader), ``rows_decoded``
by the decode step, ``rows_encoded`` after the model, and ``errors_<reason>`` where the error
record is made. The summary line, the remote status lines and the manifest's counts all read
through this module, so a name is built by :func:`error_counter` and parsed by
:func:`error_reason` and nowhere else. Beam-free: the DoFns hand these names to Beam's
``Metrics``.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

from transforms.reasons import Reason

#: The namespace of every counter of the job (queried by the launcher).
NAMESPACE = "osnet"
ROWS_READ = "rows_read"
ROWS_DECODED = "rows_decoded"
ROWS_ENCODED = "rows_encoded"
#: A distribution: the pixels of each decoded crop.
CROP_PIXELS = "crop_pixels"
_ERROR_PREFIX = "errors_"


def error_counter(reason: Union[Reason, str]) -> str:
    """The counter of the rows that failed for ``reason`` (a known code, else ValueError)."""
    return _ERROR_PREFIX + Reason(reason).value


def error_reason(counter: str) -> Optional[str]:
    """The reason code an error counter counts; None for any other counter."""
    return counter[len(_ERROR_PREFIX):] if counter.startswith(_ERROR_PREFIX) else None


def errors_by_reason(counters: Mapping[str, int]) -> dict[str, int]:
    """The error counts by reason code, sorted by code."""
    found = {error_reason(name): value for name, value in counters.items()}
    return {reason: found[reason] for reason in sorted(r for r in found if r is not None)}


def error_total(counters: Mapping[str, int]) -> int:
    """Every row that became an error, whatever the reason."""
    return sum(errors_by_reason(counters).values())


def counters_from_counts(rows_encoded: int, by_reason: Mapping[str, int]) -> dict[str, int]:
    """The counters a run would have had, from what its output shards hold (every input row is in
    exactly one shard): read = features + errors; decoded = features + the rows the model failed on."""
    counters = {
        ROWS_READ: rows_encoded + sum(by_reason.values()),
        ROWS_DECODED: rows_encoded + by_reason.get(Reason.INFERENCE_FAILED.value, 0),
        ROWS_ENCODED: rows_encoded,
    }
    counters.update({error_counter(reason): n for reason, n in by_reason.items()})
    return counters
