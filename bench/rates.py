"""Summary statistics and the rates of a run from the times its encoded rows left the model.

Pure functions (no Beam, no torch): the child measurements and the reports share them.
"""
from __future__ import annotations

import statistics
from typing import Any, Sequence

#: A gap between two encoded rows longer than this starts a new batch (rows of one batch leave
#: RunInference microseconds apart; a batch takes milliseconds at least).
BATCH_GAP_S = 0.002


def stats(values: Sequence[float]) -> dict[str, Any]:
    values = [float(v) for v in values]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }



def paired(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """:func:`stats` of the ratios repeat by repeat (``numerators[i] / denominators[i]``)."""
    return stats([n / d for n, d in zip(numerators, denominators)])


def batches_of(stamps: Sequence[float], gap: float = BATCH_GAP_S) -> list[int]:
    """Sizes of the groups of encoded rows that left the model together (split at gaps > ``gap``)."""
    sizes: list[int] = []
    previous = None
    for stamp in stamps:
        if previous is None or stamp - previous > gap:
            sizes.append(0)
        sizes[-1] += 1
        previous = stamp
    return sizes


def steady_rate(stamps: Sequence[float]) -> dict[str, Any]:
    """Rows per second from the end of the first batch to the end of the last one.

    The rows of the first batch are not counted (their time is before the first stamp: start-up);
    every later row was encoded in the interval. Also the rate over the second half of that
    interval alone, as a check that the rate is steady.
    """
    stamps = sorted(stamps)
    sizes = batches_of(stamps)
    if len(sizes) < 2:
        return {"steady_rows_per_s": None, "second_half_rows_per_s": None, "batches": sizes}
    span = stamps[-1] - stamps[0]
    midpoint = stamps[0] + span / 2
    late = [s for s in stamps if s > midpoint]
    # rows that finished after the midpoint, minus the batch that straddles it, over the time
    # from the end of the straddling batch to the end: same counting as above
    late_sizes = batches_of(late)
    late_rate = None
    if len(late_sizes) >= 2:
        late_rate = (len(late) - late_sizes[0]) / (late[-1] - late[0])
    return {
        "steady_rows_per_s": (len(stamps) - sizes[0]) / span,
        "second_half_rows_per_s": late_rate,
        "batches": sizes,
    }


def central_rate(stamps: Sequence[float], share: float = 0.9) -> dict[str, Any]:
    """Rows per second over the central ``share`` of the encoded rows (5% to 95% by default).

    With several worker processes the first-to-last rate also holds their staggered start
    (each imports torch and initialises CUDA) and the last ones' tail; the middle of the run is
    when every process works: the steady state of a long job.
    """
    stamps = sorted(stamps)
    if len(stamps) < 20 or len(batches_of(stamps)) < 4:  # too few batches to call anything steady
        return {"central_rows_per_s": None, "central_share": share}
    low = int(len(stamps) * (1 - share) / 2)
    high = len(stamps) - 1 - low
    span = stamps[high] - stamps[low]
    return {"central_rows_per_s": (high - low) / span if span > 0 else None, "central_share": share}

