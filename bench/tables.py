"""Input tables of the benchmarks, in the producer's CSV format: the seed rows replicated (mode
bench, the GPU and variant runs), and the scale check's table with every kind of bad row.
"""
from __future__ import annotations

import collections
import csv
import io
import math
import random
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from testkit.reference import SEED_TABLE, read_seed_rows

csv.field_size_limit(sys.maxsize)

COLUMNS = ["frame", "track_id", "camera", "file", "feature_vector"]


def seed_rows(shared: Optional[Path]) -> tuple[list[list[Any]], str]:
    """Rows ``[frame, track_id, camera, file, cell]``: the real seed table, or synthetic crops."""
    if shared is not None and (shared / SEED_TABLE).is_file():
        rows = [[r[c] for c in COLUMNS] for r in read_seed_rows(shared / SEED_TABLE)]
        return rows, f"real crops: {shared / SEED_TABLE} ({len(rows)} rows, replicated)"
    import numpy as np

    from pipeline.demo import synthetic_crop
    from transforms.crop_codec import encode_crop

    rng = np.random.default_rng(0)
    rows = []
    for index in range(198):
        identity, camera = index % 33, 1 + (index // 3) % 2
        cell = encode_crop(synthetic_crop(identity, camera, rng))
        rows.append([index, identity, f"{camera:02d}", f"synthetic/{identity:03d}_{index}.png", cell])
    return rows, "synthetic crops from pipeline.demo.synthetic_crop (198 rows, replicated): ../shared absent"


def bench_rows(n_rows: int, seeds: list[list[Any]], first: int = 0) -> Iterator[list[Any]]:
    """Rows ``first`` to ``first + N - 1`` of the endless table: the seed rows repeated, frame and
    file made unique."""
    for index in range(first, first + n_rows):
        _frame, track, camera, name, cell = seeds[index % len(seeds)]
        yield [index, track, camera, f"{name}#{index // len(seeds)}", cell]


def write_bench_table(path: Path, n_rows: int, seeds: list[list[Any]], first: int = 0) -> None:
    """:func:`bench_rows` in the producer's CSV format (``first``: for shards of one table)."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(bench_rows(n_rows, seeds, first))


def newlines(text: str) -> int:
    """Line endings as Python's universal newlines count them (\\r\\n, \\r, \\n)."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def is_csv_cell(cell: Any) -> bool:
    """A cell that a QUOTE_NONNUMERIC CSV file holds as it is (a CSV file has no lists or bytes)."""
    if cell is None or isinstance(cell, str):
        return True
    if isinstance(cell, float):
        return math.isnan(cell)
    return type(cell) is int


BROKEN_RECORDS = [
    # an unclosed quote (a truncated write): costs this one line
    "{i},5,\"01\",\"broken/{i}.png\",\"{{'width': 48, 'image': '789c\n",
    # too few fields
    "{i},\"01\"\n",
]
BROKEN_LOOKAHEAD = 70  # > csv_records.DEFAULT_MAX_RECORD_LINES: no odd-quote line that close after one
SCHEMA_SAMPLE = 1000  # csv's TYPE_SAMPLE_RECORDS: keep bad column values out of every file's type sample


def plan_scale_rows(n_rows: int, bad_fraction: float, large_copies: int, huge_copies: int, shards: int,
                    seed: int = 0) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """The row kinds in order: ("good", None), ("cell", BadCell), ("broken", i), ("column", None)."""
    from testkit.bad_cells import bad_cells

    cases = bad_cells()
    usable = [c for c in cases if is_csv_cell(c.cell)]
    skipped = {c.name: "not representable in a CSV file (written out it would be a different, textual cell)"
               for c in cases if not is_csv_cell(c.cell)}
    n_bad = max(len(usable) + 2, round(n_rows * bad_fraction))
    n_broken = max(1, n_bad // 200)
    n_column = max(1, n_bad // 200)
    huge = [c for c in usable if isinstance(c.cell, str) and len(c.cell) > 10_000_000]
    large = [c for c in usable if isinstance(c.cell, str) and 65_536 < len(c.cell) <= 10_000_000]
    small = [c for c in usable if c not in huge and c not in large]
    cell_rows: list = [c for c in huge for _ in range(huge_copies)] + [c for c in large for _ in range(large_copies)]
    remaining = max(len(small), n_bad - n_broken - n_column - len(cell_rows))
    cell_rows += [small[i % len(small)] for i in range(remaining)]
    rng = random.Random(seed)
    kinds: list[tuple[str, Any]] = [("good", None)] * n_rows
    # broken records first, evenly spaced, each followed by enough plain lines
    spacing = n_rows // (n_broken + 1)
    if spacing <= BROKEN_LOOKAHEAD + 1:
        raise ValueError(f"{n_rows} rows are too few for {n_broken} broken records")
    protected = set()
    for k in range(n_broken):
        position = spacing * (k + 1)
        kinds[position] = ("broken", k)
        protected.update(range(position - 1, position + BROKEN_LOOKAHEAD + 1))
    free = [i for i in range(n_rows) if kinds[i][0] == "good"]
    rng.shuffle(free)
    multiline = lambda c: isinstance(c.cell, str) and newlines(c.cell) > 0  # noqa: E731
    for case in cell_rows:
        pick = len(free) - 1
        if multiline(case):  # a cell spanning lines must not close a broken record's open quote
            while pick >= 0 and free[pick] in protected:
                pick -= 1
            if pick < 0:
                raise ValueError(f"{n_rows} rows leave no room for the multi-line cell {case.name}")
        kinds[free.pop(pick)] = ("cell", case)
    placed_column = 0
    first_shard = math.ceil(n_rows / shards)
    for index in free:
        if placed_column == n_column:
            break
        if index % first_shard >= SCHEMA_SAMPLE + 10:  # past its own shard's sample (else: a text column)
            kinds[index] = ("column", None)
            placed_column += 1
    planned = {
        "rows": n_rows,
        "bad_rows": sum(1 for k in kinds if k[0] not in ("good", "column")),  # a widening row is good
        "broken_csv_records": n_broken,
        "widening_values": placed_column,
        "bad_cell_kinds_used": len(usable),
        "bad_cell_kinds_skipped": skipped,
        "copies_of_cells_over_10_MB": huge_copies,
        "copies_of_cells_over_64_KB": large_copies,
    }
    return kinds, planned


def write_scale_table(directory: Path, kinds: list[tuple[str, Any]], seeds: list[list[Any]],
                      shards: int) -> tuple[dict[int, dict], dict[str, tuple], collections.Counter, int, dict[int, str]]:
    """Write the shards streaming; return what each bad row must come out as.

    Returns (expected error rows by frame, expected broken records by raw text -> (file, line),
    expected count per reason, number of good rows, the text of the track_id values that widen
    the column by frame: their rows are among the good ones).
    """
    directory.mkdir(parents=True, exist_ok=True)
    expected_rows: dict[int, dict] = {}
    expected_broken: dict[str, tuple] = {}
    widened_rows: dict[int, str] = {}
    reasons: collections.Counter = collections.Counter()
    good = 0
    per_shard = math.ceil(len(kinds) / shards)
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    for shard in range(shards):
        path = directory / f"part-{shard:05d}-of-{shards:05d}.csv"
        with open(path, "w", newline="", encoding="utf-8") as stream:
            buffer.seek(0)
            buffer.truncate()
            writer.writerow(COLUMNS)
            stream.write(buffer.getvalue())
            line = 1  # lines written so far
            for index in range(shard * per_shard, min(len(kinds), (shard + 1) * per_shard)):
                kind, payload = kinds[index]
                frame, track, camera, name, cell = seeds[index % len(seeds)]
                buffer.seek(0)
                buffer.truncate()
                if kind == "broken":
                    text = BROKEN_RECORDS[payload % len(BROKEN_RECORDS)].format(i=index)
                    expected_broken[text.rstrip("\n")] = (str(path), line + 1)
                    reasons["bad_csv_record"] += 1
                    buffer.write(text)
                elif kind == "column":  # past every sample: widens track_id to text, keeps its row
                    row = [index, f"not a number {index}", camera, f"widened/{index}", cell]
                    writer.writerow(row)
                    widened_rows[index] = row[1]
                    good += 1
                elif kind == "cell":
                    row = [index, -1, "99", f"bad/{payload.name}/{index}", payload.cell]
                    writer.writerow(row)
                    # what the file holds: csv writes None as "" (quoted), NaN as nan (JSON null)
                    value = "" if payload.cell is None else None if isinstance(payload.cell, float) else payload.cell
                    expected_rows[index] = {"reason": payload.reason, "row": dict(zip(COLUMNS, row[:4] + [value])),
                                            "kind": payload.name}
                    reasons[payload.reason] += 1
                else:
                    writer.writerow([index, track, camera, f"{name}#{index}", cell])
                    good += 1
                text = buffer.getvalue()
                line += newlines(text)
                stream.write(text)
    return expected_rows, expected_broken, reasons, good, widened_rows

