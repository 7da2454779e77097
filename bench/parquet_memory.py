"""Peak RSS of reading one single-row-group Parquet file: our reader beside Beam's ReadFromParquet.

pandas and pyarrow write up to 1,048,576 rows in ONE row group. This builds such files from the
shared crops (replicated, each row its own ``frame``; the image column written without a
dictionary, as unique crops are), at ``--rows`` and at twice that, and reads each in a fresh
process with the DirectRunner (one in-process worker): the rows only counted, nothing kept, so
the process's peak RSS is what reading costs. Readers: ``osnet`` (``transforms.read.ReadRows``:
the job's own reading) and ``beam`` (``apache_beam.io.parquetio.ReadFromParquet``, which loads a
whole row group). ``baseline`` is the same pipeline reading a one-row file.

    python bench/parquet_memory.py --rows 4000 [--json bench/results/parquet_memory.json]

Prints one line per reader and size, then a JSON summary (peak RSS in MiB, rows read).
Only a measuring script: the throughput of 1 vs 2 processes belongs to the scale-out benchmark.

``--end-to-end`` measures the whole job instead: ``python -m pipeline`` on each file with 2 SDK
processes (``--direct_num_workers=2 --direct_running_mode=multi_processing --threads=1``), the
peak RSS of the whole process tree (launcher, SDK workers, any child they start) polled, the run's
manifest read back (every row encoded). Each run starts with an empty model cache (its own
``TMPDIR``), so a first run's export is inside the measurement. ``--baseline-rev REV`` also runs
the job of revision REV (``git archive``, same interpreter), interleaved with this checkout's:

    python bench/parquet_memory.py --end-to-end --rows 20000 --baseline-rev e338080 \
        --json bench/results/parquet_rss_e2e.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED = REPO_ROOT.parent / "shared" / "data" / "seed_format" / "real_crops.csv"
IMAGE_COLUMN = "feature_vector"
READERS = ("baseline", "osnet", "beam")


def write_single_row_group(seed_csv: Path, rows: int, path: Path) -> int:
    """``rows`` rows of the seed crops in ONE row group; returns the file's size in bytes."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    seed = pacsv.read_csv(seed_csv)
    repeats = -(-rows // max(seed.num_rows, 1))
    table = pa.concat_tables([seed] * repeats).slice(0, rows)
    table = table.set_column(table.column_names.index("frame"), "frame", pa.array(range(rows), pa.int64()))
    others = [name for name in table.column_names if name != IMAGE_COLUMN]
    pq.write_table(table, path, row_group_size=max(rows, 1), use_dictionary=others)
    return path.stat().st_size


def child(reader: str, path: str) -> None:
    """Read ``path`` with ``reader`` in this process; print peak RSS (MiB) and rows read."""
    import apache_beam as beam
    from apache_beam.io.parquetio import ReadFromParquet
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.read import ReadRows, inspect_input

    import pyarrow.parquet as pq

    expected = pq.ParquetFile(path).metadata.num_rows
    with beam.Pipeline() as p:
        if reader == "beam":
            rows = p | ReadFromParquet(path)
        else:
            rows = (p | ReadRows(inspect_input(path, IMAGE_COLUMN), IMAGE_COLUMN))["rows"]
        assert_that(rows | beam.combiners.Count.Globally(), equal_to([expected]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"reader": reader, "peak_rss_mib": round(peak, 1), "rows": expected}))


def measure(reader: str, path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", reader, str(path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{reader} on {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def end_to_end(path: Path, tree: Path, label: str, workdir: Path, weights: str) -> dict:
    """One ``python -m pipeline`` run of ``tree`` on ``path`` with 2 SDK processes: peak tree RSS."""
    sys.path.insert(0, str(REPO_ROOT))
    from bench.harness import run_measured, tree_env

    output, tmp = workdir / f"out-{label}", workdir / f"tmp-{label}"
    tmp.mkdir()
    cmd = [sys.executable, "-m", "pipeline", "--input", str(path), "--output", str(output), "--weights", weights,
           "--threads=1", "--direct_num_workers=2", "--direct_running_mode=multi_processing", "--progress", "off"]
    measured = run_measured(cmd, label, workdir, poll_s=0.2, env={**tree_env(tree), "TMPDIR": str(tmp)}, cwd=tree)
    manifest = json.loads((output / "_SUCCESS.json").read_text())
    return {"label": label, "wall_s": round(measured["wall_s"], 1),
            "peak_tree_rss_mb": round(measured["peak_tree_rss_mb"], 1),
            "foreign_cores": round(measured["foreign_cores"], 2), "counts": manifest["counts"]}


def main_end_to_end(args) -> int:
    sys.path.insert(0, str(REPO_ROOT))
    from bench import baseline as baselines
    from weights import BUNDLED_WEIGHTS

    weights = args.weights or str(BUNDLED_WEIGHTS)
    trees = {"this": REPO_ROOT}
    results = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
        if args.baseline_rev:
            trees["baseline"] = stack.enter_context(baselines.checkout(args.baseline_rev))["path"]
        files = {}
        for rows in (args.rows, 2 * args.rows):
            path = Path(folder) / f"rows-{rows}.parquet"
            files[rows] = (path, write_single_row_group(args.seed, rows, path))
        for repeat in range(args.repeats):
            for rows, (path, size) in files.items():
                for name, tree in trees.items():
                    run = end_to_end(path, Path(tree), f"{name}-{rows}-r{repeat}", Path(folder), weights)
                    run.update(tree=name, file_rows=rows, file_mib=round(size / 2**20, 1), repeat=repeat)
                    results.append(run)
                    print(f"{name:>8}: {rows} rows ({size / 2**20:.0f} MiB, one row group), 2 processes: "
                          f"peak tree RSS {run['peak_tree_rss_mb']:.0f} MB, {run['wall_s']} s, "
                          f"encoded {run['counts']['rows_encoded']}", flush=True)
    summary = {"python": sys.version.split()[0], "weights": weights, "baseline_rev": args.baseline_rev,
               "results": results}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000, help="rows of the smaller file (the other has twice)")
    parser.add_argument("--seed", type=Path, default=DEFAULT_SEED, help="CSV of crops in the seed format")
    parser.add_argument("--readers", default="baseline,osnet,beam", help="comma-separated: " + ", ".join(READERS))
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--child", nargs=2, metavar=("READER", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--end-to-end", action="store_true", help="the whole job on 2 SDK processes (see above)")
    parser.add_argument("--baseline-rev", default=None, help="with --end-to-end: also run this revision's job")
    parser.add_argument("--weights", default=None, help="with --end-to-end (default: the bundled weights)")
    parser.add_argument("--repeats", type=int, default=1, help="with --end-to-end")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.end_to_end:
        return main_end_to_end(args)
    readers = [r for r in args.readers.split(",") if r]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        one_row = Path(folder) / "one-row.parquet"
        write_single_row_group(args.seed, 1, one_row)
        for rows in (args.rows, 2 * args.rows):
            path = Path(folder) / f"rows-{rows}.parquet"
            size = write_single_row_group(args.seed, rows, path)
            for reader in readers:
                result = measure(reader, one_row if reader == "baseline" else path)
                result.update(file_rows=rows, file_mib=round(size / 2**20, 1))
                results.append(result)
                print(f"{reader:>8}: {rows} rows, {size / 2**20:.0f} MiB file, one row group: "
                      f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    summary = {"python": sys.version.split()[0], "results": results}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
