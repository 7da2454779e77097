"""bench/scaleout.py's pure parts: the inputs it builds and how it turns runs into figures.

(Its end-to-end smoke run, ``python bench/scaleout.py --tiny``, runs the CLI eight times: too long
for the default suite on a 2-core machine, so only its arithmetic and inputs are tested here.)
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from transforms.read import inspect_input

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "scaleout.py"


@pytest.fixture(scope="module")
def bench():
    from bench import scaleout

    return scaleout


def test_built_inputs_are_one_csv_file_or_one_row_group(bench, shared_dir, tmp_path):
    from bench.tables import seed_rows

    seeds, source = seed_rows(shared_dir)
    assert "real crops" in source
    parquet = bench.build_input(tmp_path / "t.parquet", 450, seeds, "parquet")
    assert pq.ParquetFile(parquet).metadata.num_row_groups == 1
    assert pq.ParquetFile(parquet).metadata.num_rows == 450
    table = bench.build_input(tmp_path / "t.csv", 450, seeds, "csv")
    layout = inspect_input(str(table), "feature_vector")
    assert layout.csv_plans[0].splittable  # the seed rows hold no quoted newlines
    assert len(pq.read_table(parquet).column("file").unique()) == 450


def _run(config, path, repeat, rows, wall, shares):
    return {"config": config, "input": path, "repeat": repeat, "rows_read": rows, "rows_encoded": rows,
            "errors": 0, "wall_s": wall, "peak_tree_rss_mb": 100.0 * (1 + (config == "two_processes")),
            "parsed_shares_by_process": shares, "encoded_shares_by_batcher": list(shares.values())}


def test_steady_rates_cancel_start_up_and_give_the_ratio(bench):
    runs = []
    for repeat in range(3):
        # one process: 20 s start-up + 10 rows/s; two: 30 s start-up + 20 rows/s
        runs += [_run("one_process", "s", repeat, 100, 30.0, {"1": 1.0}),
                 _run("one_process", "b", repeat, 200, 40.0, {"1": 1.0}),
                 _run("two_processes", "s", repeat, 100, 35.0, {"1": 0.5, "2": 0.5}),
                 _run("two_processes", "b", repeat, 200, 40.0, {"1": 0.4, "2": 0.6})]
    summary = bench.summarise(runs, [Path("s"), Path("b")], 3)
    assert summary["configs"]["one_process"]["steady_rows_per_s"]["median"] == 10.0
    assert summary["configs"]["two_processes"]["steady_rows_per_s"]["median"] == 20.0
    assert summary["ratio_two_over_one"]["steady_of_medians"] == 2.0
    assert summary["ratio_two_over_one"]["median_of_per_repeat"] == 2.0
    assert summary["configs"]["two_processes"]["parsed_shares_by_process_big"][0] == [0.4, 0.6]
    assert summary["counts_equal_across_configs"]
    result = {"summary": summary, "format": "csv", "timestamp": "t", "machine": "m", "weights": "w",
              "repeats": 3, "input_rows": {"s": 100, "b": 200}}
    assert "**2.0**" in bench.markdown(result)
