#!/usr/bin/env python
"""GPU figures of osnet-beam, in one invocation on one GPU machine (issue 6, step 4).

    python bench/gpu_benchmark.py                      # everything, about 5 minutes on an H100/H200
    python bench/gpu_benchmark.py --sections parity    # one section (parity, model, e2e)
    python bench/gpu_benchmark.py --tiny --device cpu  # every code path in seconds, without a GPU

Three sections, each its own result in ``--out`` (default bench/results/gpu_latest.json and .md):

- ``parity``: the 198 real crops of ``../shared`` through ``OsNetEncoder`` on the GPU in fp32,
  fp16 and bf16, for every checkpoint there: fp32 against torchreid's own features (cosine,
  max |diff|), fp16/bf16 against fp32, cross-camera rank-1/mAP per precision; and whether the
  on-device normalisation equals :func:`model.preprocess.standardize_batch` bit for bit.
- ``model``: the network alone (osnet_ibn_x1_0) per precision and batch size, three ways:
  ``pixels`` (resized uint8 from host memory, normalised on the GPU: what the pipeline does),
  ``float32`` (a normalised float32 batch from host memory: four times the bytes) and
  ``resident`` (input already on the GPU: the network and nothing else). Images per second,
  median of ``--repeats`` timed runs of at least ``--min-seconds`` each, every call complete
  when timed (``pixels`` and ``float32`` return the features in host memory, ``resident`` ends
  with a CUDA synchronise).
- ``e2e``: the pipeline as ``python -m pipeline`` builds it (CSV in, Parquet out, ``--device
  cuda --precision fp16``) on the DirectRunner with 1..N SDK worker processes, each with its own
  model or one model shared by them, at chosen batch sizes (``--e2e-configs``), rows stamped as
  they leave the model, from every process. Reports the steady rate over the
  central 90% of rows, the first-to-last rate, start-up and wall time, and the ratio to the
  model alone (pixels path, the pipeline's batch size and precision).

Each e2e run is a child process (``bench.harness.run_child``), watched for the peak
RSS of its process tree. The table is the real crops of ``../shared`` replicated (synthetic
crops without it), in CSV shards of ``--shard-rows`` rows; a run with K workers reads
``--rows-per-worker`` x K rows, so every run lasts about as long.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if not __package__:  # run as a script
    import _as_package  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]

from bench.checkpoints import bench_weights  # noqa: E402
from bench.harness import run_child  # noqa: E402
from bench.machine import DEFAULT_OUT, find_shared, git_revision, machine_info  # noqa: E402
from bench.rates import stats  # noqa: E402
from bench.tables import seed_rows, write_bench_table  # noqa: E402
from testkit.reference import CHECKPOINTS, SEED_TABLE, read_seed_rows  # noqa: E402

PRECISIONS = ("fp32", "fp16", "bf16")
MODEL_ARCH = "osnet_ibn_x1_0"
#: the shared checkpoints but the int8-derived x1.0 stand-in (the parity of x1.0 is the IBN one's)
PARITY_CHECKPOINTS = {stem: arch for stem, arch in CHECKPOINTS.items() if stem != "osnet_x1_0_market1501_from_int8"}
TARGET_E2E_VS_MODEL = 0.70
TARGET_REDUCED_COSINE = 0.999
TARGET_FP32_COSINE = 0.99999


def log(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def words(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def device_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version())
    return info


# ------------------------------------------------------------------------------------------------
# parity: reduced precision against fp32, fp32 against torchreid
# ------------------------------------------------------------------------------------------------
def seed_crops(shared: Path) -> tuple[list[str], list, dict[str, tuple[str, str]]]:
    """(file names, decoded crops, file -> (identity, camera)) of the shared seed table."""
    from transforms.crop_codec import decode_crop

    rows = read_seed_rows(shared / SEED_TABLE)
    labels = {row["file"]: (str(row["track_id"]), row["camera"]) for row in rows}
    return [row["file"] for row in rows], [decode_crop(row["feature_vector"]) for row in rows], labels


def run_parity(shared: Optional[Path], device: str, batch_size: int) -> dict[str, Any]:
    import numpy as np

    from model import OsNetEncoder
    from model.preprocess import standardize_batch, resize_batch
    from testkit.reference import cross_camera_retrieval, row_cosine

    if shared is None:
        return {"skipped": "../shared absent: no real crops or reference features"}
    files, crops, labels = seed_crops(shared)
    index = {name: i for i, name in enumerate(files)}
    gpu = device.startswith("cuda")
    result: dict[str, Any] = {"crops": len(crops), "checkpoints": {}}
    for stem, arch in PARITY_CHECKPOINTS.items():
        weights = shared / "weights" / f"{stem}.pth"
        reference_path = shared / "data" / "reference" / f"{stem}.npz"
        if not weights.is_file() or not reference_path.is_file():
            continue
        with np.load(reference_path, allow_pickle=False) as data:
            order = [index[str(f)] for f in data["files"]]
            reference = data["features"].astype(np.float32)
        ordered = [crops[i] for i in order]
        ordered_files = [files[i] for i in order]
        per_precision: dict[str, Any] = {}
        features: dict[str, np.ndarray] = {}
        for precision in PRECISIONS if gpu else ("fp32",):
            encoder = OsNetEncoder(weights, arch=arch, GPU=gpu, backend="torch", precision=precision,
                                   batch_size=batch_size)
            features[precision] = encoder.encode_batch(ordered)
            rank1, mean_ap = cross_camera_retrieval(features[precision], ordered_files, labels)
            vs_reference = row_cosine(features[precision], reference)
            entry = {
                "cosine_vs_torchreid_min": float(vs_reference.min()),
                "max_abs_diff_vs_torchreid": float(np.abs(features[precision] - reference).max()),
                "rank1": rank1,
                "mAP": mean_ap,
            }
            if precision != "fp32":
                entry["cosine_vs_fp32_min"] = float(row_cosine(features[precision], features["fp32"]).min())
                entry["cosine_vs_fp32_median"] = float(np.median(row_cosine(features[precision], features["fp32"])))
            per_precision[precision] = entry
            if precision == "fp32" and stem == "osnet_x0_25_msmt17":
                pixels = resize_batch(ordered)
                on_device = encoder.backend.standardize_pixels(pixels, encoder.norm_mean, encoder.norm_std)
                result["device_normalisation_bit_identical"] = bool(
                    np.array_equal(on_device.cpu().numpy(), standardize_batch(pixels, encoder.norm_mean, encoder.norm_std))
                )
        reference_rank1 = cross_camera_retrieval(reference, ordered_files, labels)
        result["checkpoints"][stem] = {"torchreid_rank1_mAP": reference_rank1, **per_precision}
        log(f"  parity {stem}: " + ", ".join(
            f"{p} cos>={v.get('cosine_vs_fp32_min', v['cosine_vs_torchreid_min']):.6f}" for p, v in per_precision.items()))
    return result


# ------------------------------------------------------------------------------------------------
# model only
# ------------------------------------------------------------------------------------------------
def timed_rate(call: Callable[[int], Any], images_per_call: int, min_seconds: float, repeats: int,
               rotate: int) -> dict[str, Any]:
    """Images per second of ``call(i)`` (i rotates over ``rotate`` inputs): median of repeats."""
    for i in range(3):  # warm-up: cuDNN picks its algorithms, allocators fill
        call(i % rotate)
    rates = []
    for _ in range(repeats):
        calls, started = 0, time.perf_counter()
        while True:
            call(calls % rotate)
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds and calls >= 3:
                break
        rates.append(calls * images_per_call / elapsed)
    return stats(rates)


def run_model(crops: list, weights: str, device: str, precisions: Sequence[str], batch_sizes: Sequence[int],
              min_seconds: float, repeats: int, all_paths_for: str) -> dict[str, Any]:
    """Images per second per precision and batch size; the ``float32`` and ``resident`` paths
    only for ``all_paths_for`` (the pipeline's precision), to keep the run short."""
    import torch

    from model import create_backend, load_osnet
    from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, standardize_batch, resize_batch

    module = load_osnet(weights, MODEL_ARCH)
    largest = max(batch_sizes)
    rotate = 3  # distinct input batches, so no run reuses the previous one's host buffers
    pixels = resize_batch([crops[i % len(crops)] for i in range(largest * rotate)])
    pixel_batches = {size: [pixels[k * largest : k * largest + size] for k in range(rotate)] for size in batch_sizes}
    result: dict[str, Any] = {"arch": MODEL_ARCH, "device": device, "img_per_s": {}}
    for precision in precisions:
        backend = create_backend(module, backend="torch", device=device, precision=precision)
        per_path: dict[str, Any] = {"pixels": {}, "float32": {}, "resident": {}}
        for size in batch_sizes:
            batches = pixel_batches[size]
            per_path["pixels"][str(size)] = timed_rate(
                lambda i: backend.features_from_pixels(batches[i], IMAGENET_MEAN, IMAGENET_STD),
                size, min_seconds, repeats, rotate)
            if precision != all_paths_for:
                log(f"  model {precision} batch {size}: pixels {per_path['pixels'][str(size)]['median']:.0f} img/s")
                continue
            floats = [standardize_batch(b) for b in batches]
            per_path["float32"][str(size)] = timed_rate(lambda i: backend(floats[i]), size, min_seconds, repeats, rotate)
            resident = [backend.standardize_pixels(b, IMAGENET_MEAN, IMAGENET_STD) for b in batches]

            def network(i: int) -> None:
                with torch.inference_mode():
                    backend.module(resident[i].to(dtype=backend.dtype, memory_format=backend._memory_format))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()

            per_path["resident"][str(size)] = timed_rate(network, size, min_seconds, repeats, rotate)
            log(f"  model {precision} batch {size}: " + ", ".join(
                f"{path} {per_path[path][str(size)]['median']:.0f}" for path in per_path) + " img/s")
        result["img_per_s"][precision] = per_path
        backend = None  # frees its GPU memory before the next precision's
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            result.setdefault("peak_gpu_memory_mib", {})[precision] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
    return result


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------
def write_shards(directory: Path, seeds: list[list[Any]], shards: int, rows_per_shard: int) -> list[Path]:
    """``shards`` CSV files of one table in the producer's format, rows made unique by frame and file."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"part-{shard:05d}.csv" for shard in range(shards)]
    for shard, path in enumerate(paths):
        write_bench_table(path, rows_per_shard, seeds, first=shard * rows_per_shard)
    return paths


def parse_config(text: str) -> tuple[int, bool, Optional[int]]:
    """``K[s][@B]``: K SDK processes, ``s`` = one model shared by them, ``@B`` = ``--batch_size=B``."""
    match = re.fullmatch(r"(\d+)(s?)(?:@(\d+))?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"an e2e configuration is K[s][@B] (e.g. 16, 8s, 16s@512), not {text!r}")
    return int(match[1]), bool(match[2]), int(match[3]) if match[3] else None


def run_e2e(args: argparse.Namespace, seeds: list[list[Any]], weights: str, workdir: Path,
            progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The e2e runs; ``progress`` gets the section's result after each run (a killed benchmark
    keeps the runs it finished)."""
    from model.policy import plan_here

    shard_rows = args.shard_rows
    configs = [parse_config(text) for text in args.e2e_configs]
    shards_needed = {k: max(1, -(-args.rows_per_worker * k // shard_rows)) for k, _, _ in configs}
    started = time.perf_counter()
    # a few distinct shards, each linked under several names: the page cache serves them, and
    # the table costs seconds to make however many rows the largest run reads
    distinct = write_shards(workdir / "shards", seeds, min(args.distinct_shards, max(shards_needed.values())), shard_rows)
    shards = [distinct[i % len(distinct)] for i in range(max(shards_needed.values()))]
    size_gib = sum(p.stat().st_size for p in shards) / 2**30
    log(f"  e2e table: {len(shards)} shards x {shard_rows} rows ({size_gib:.2f} GiB; {len(distinct)} distinct) "
        f"in {time.perf_counter() - started:.1f}s")
    # SDK worker processes import the project and the probe by name
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    runs: dict[str, Any] = {}
    section = {"shard_rows": shard_rows, "precision": args.e2e_precision, "device": args.e2e_device,
               "pipeline_args": args.e2e_arg, "runs": runs}
    for (workers, shared_model, batch_size), label in zip(configs, args.e2e_configs):
        folder = workdir / f"input_{label}"
        folder.mkdir()
        for index, path in enumerate(shards[: shards_needed[workers]]):
            (folder / f"part-{index:05d}.csv").symlink_to(path)
        rows = shards_needed[workers] * shard_rows
        stamp_dir = workdir / f"stamps_{label}"
        stamp_dir.mkdir()
        pipeline_args = [f"--device={args.e2e_device}", f"--precision={args.e2e_precision}", *args.e2e_arg]
        if workers > 1:
            pipeline_args += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
        if shared_model:
            pipeline_args.append("--share_model_across_processes")
        if batch_size:
            pipeline_args.append(f"--batch_size={batch_size}")
        spec = {"table": str(folder / "*.csv"), "rows": rows, "output": str(workdir / f"out_{label}"),
                "weights": weights, "arch": MODEL_ARCH, "pipeline_args": pipeline_args, "stamp_dir": str(stamp_dir)}
        try:
            measured = run_child("e2e", spec, f"e2e_{label.replace('@', '_b')}", workdir, timeout_s=args.e2e_timeout)
        except Exception as error:  # one failed configuration must not cost the others' figures
            log(f"  e2e {label} failed: {error}")
            runs[label] = {"error": str(error)[-2000:]}
            progress(section)
            continue
        outcome = measured["result"]
        outcome["all_rows_encoded"] = outcome["rows_encoded"] == rows and outcome["counters"].get("rows_encoded") == rows
        runs[label] = {**outcome, "wall_s_measured": measured["wall_s"], "peak_rss_mb": measured["peak_rss_mb"],
                       "processes": workers, "shared_model": shared_model,
                       "batch_size": batch_size or plan_here("auto", args.e2e_device, args.e2e_precision).batch_size}
        log(f"  e2e {label} processes: {rows} rows, central {outcome['central_rows_per_s'] or 0:.0f} rows/s, "
            f"first-to-last {outcome['steady_rows_per_s'] or 0:.0f} rows/s, start-up {outcome['startup_s'] or 0:.1f}s, "
            f"wall {measured['wall_s']:.1f}s, all rows: {outcome['all_rows_encoded']}")
        shutil.rmtree(workdir / f"out_{label}", ignore_errors=True)
        shutil.rmtree(stamp_dir, ignore_errors=True)
        progress(section)
    return section


# ------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------
def model_rate(result: dict[str, Any], precision: str, batch: int) -> Optional[float]:
    """Model-only images/s, pixels path (what the pipeline runs), at one precision and batch."""
    per_size = result.get("model", {}).get("img_per_s", {}).get(precision, {}).get("pixels", {})
    return per_size.get(str(batch), {}).get("median")


def summarise(result: dict[str, Any], pipeline_batch: int) -> dict[str, Any]:
    """Headline figures and the issue's targets, from whatever sections ran."""
    summary: dict[str, Any] = {}
    model = result.get("model", {}).get("img_per_s", {})
    e2e = result.get("e2e", {})
    precision = e2e.get("precision", "fp16")
    if model.get(precision):
        pixels = model[precision]["pixels"]
        best_size, best = max(((s, v["median"]) for s, v in pixels.items()), key=lambda item: item[1])
        summary["model_only"] = {"precision": precision, "path": "pixels", "pipeline_batch": pipeline_batch,
                                 "img_per_s_at_pipeline_batch": model_rate(result, precision, pipeline_batch),
                                 "best_batch": int(best_size), "best_img_per_s": best}
    runs = {k: v for k, v in e2e.get("runs", {}).items() if v.get("central_rows_per_s")}
    if runs:
        label, run = max(runs.items(), key=lambda item: item[1]["central_rows_per_s"])
        summary["e2e_best"] = {"config": label, "batch_size": run["batch_size"],
                               "central_rows_per_s": run["central_rows_per_s"],
                               "first_to_last_rows_per_s": run["steady_rows_per_s"]}
        same_batch = model_rate(result, precision, run["batch_size"])
        if same_batch:
            summary["e2e_vs_model_only_same_batch"] = run["central_rows_per_s"] / same_batch
        best = summary.get("model_only", {}).get("best_img_per_s")
        if best:
            summary["e2e_vs_best_model_only"] = run["central_rows_per_s"] / best
            summary["target_e2e_vs_model_met"] = run["central_rows_per_s"] / best >= TARGET_E2E_VS_MODEL
    parity = result.get("parity", {}).get("checkpoints", {})
    if parity:
        for p in ("fp16", "bf16"):
            cosines = {stem: v[p]["cosine_vs_fp32_min"] for stem, v in parity.items() if p in v}
            if cosines:
                summary[f"{p}_cosine_vs_fp32_min"] = cosines
        summary["fp32_cosine_vs_torchreid_min"] = min(v["fp32"]["cosine_vs_torchreid_min"] for v in parity.values())
    return summary


def markdown(result: dict[str, Any]) -> str:
    meta, summary = result["meta"], result["summary"]
    info = meta.get("device_info", {})
    lines = [f"Measured {meta['date']} on {info.get('gpu', info.get('device'))} "
             f"(torch {info.get('torch')}, CUDA {info.get('cuda_build')}, cuDNN {info.get('cudnn')}), "
             f"{meta['machine'].get('cores_available')} CPU cores ({meta['machine'].get('cpu_model', '?')}); "
             f"`{meta['command']}`.", ""]
    parity = result.get("parity", {}).get("checkpoints", {})
    if parity:
        lines += ["| checkpoint | precision | cosine vs fp32 (min) | cosine vs torchreid (min) | max abs diff vs torchreid | rank-1 / mAP |",  # noqa: E501 (a table row)
                  "|---|---|---|---|---|---|"]
        for stem, per in parity.items():
            for precision in PRECISIONS:
                if precision in per:
                    v = per[precision]
                    vs32 = f"{v['cosine_vs_fp32_min']:.6f}" if "cosine_vs_fp32_min" in v else "-"
                    lines.append(f"| {stem} | {precision} | {vs32} | {v['cosine_vs_torchreid_min']:.6f} | "
                                 f"{v['max_abs_diff_vs_torchreid']:.1e} | {v['rank1']:.3f} / {v['mAP']:.3f} |")
        identical = result["parity"].get("device_normalisation_bit_identical")
        lines += ["", f"On-device normalisation equal bit for bit to `standardize_batch`: {identical}.", ""]
    model = result.get("model", {}).get("img_per_s", {})
    if model:
        sizes = sorted({int(s) for per in model.values() for s in per["pixels"]})
        lines += ["| model only, img/s (median) | " + " | ".join(f"batch {s}" for s in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for precision, per in model.items():
            for path in ("pixels", "float32", "resident"):
                if not per[path]:
                    continue
                cells = [f"{per[path][str(s)]['median']:.0f}" if str(s) in per[path] else "-" for s in sizes]
                lines.append(f"| {precision}, {path} | " + " | ".join(cells) + " |")
        lines.append("")
    runs = result.get("e2e", {}).get("runs", {})
    if runs:
        precision = result["e2e"]["precision"]
        best = summary.get("model_only", {}).get("best_img_per_s")
        lines += [f"| pipeline end to end ({precision}): SDK processes (s: one shared model) @ batch | rows "
                  "| steady rows/s (central 90%) | first-to-last rows/s | vs model only, same batch | vs best model only "
                  "| start-up | wall | peak RSS (tree) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, run in runs.items():
            if "error" in run:
                lines.append(f"| {label} | failed: {run['error'].splitlines()[-1][:80]} | | | | | | | |")
                continue
            rate, same = run["central_rows_per_s"], model_rate(result, precision, run["batch_size"])
            ratio = f"{rate / same:.2f}x" if rate and same else "-"
            ratio_best = f"{rate / best:.2f}x" if rate and best else "-"
            lines.append(f"| {label} @ {run['batch_size']} | {run['rows']} | {rate or 0:.0f} | {run['steady_rows_per_s'] or 0:.0f} "
                         f"| {ratio} | {ratio_best} | {run['startup_s'] or 0:.1f} s | {run['wall_s']:.1f} s "
                         f"| {run['peak_rss_mb']:.0f} MB |")
        lines.append("")
    lines.append("Summary: " + json.dumps(summary))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=words, default=["parity", "model", "e2e"])
    parser.add_argument("--out", help="results folder (default: bench/results; with --tiny a temporary one)")
    parser.add_argument("--shared", help="reference material (default: $OSNET_SHARED_DIR or ../shared)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (for a smoke run)")
    parser.add_argument("--precisions", type=words, default=list(PRECISIONS))
    parser.add_argument("--batch-sizes", type=ints, default=[64, 128, 256, 512])
    parser.add_argument("--min-seconds", type=float, default=0.5, help="each timed model-only run lasts at least this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--e2e-configs", type=words, default=["1", "4", "8", "12", "16", "8s"],
                        help="e2e runs, each K[s][@B]: K SDK processes, s = --share_model_across_processes, "
                        "@B = --batch_size=B (default: the pipeline's own)")
    parser.add_argument("--rows-per-worker", type=int, default=8000)
    parser.add_argument("--shard-rows", type=int, default=2000)
    parser.add_argument("--distinct-shards", type=int, default=4, help="shards written; the others link to them")
    parser.add_argument("--e2e-precision", default="fp16")
    parser.add_argument("--e2e-device", default=None, help="default: --device")
    parser.add_argument("--e2e-arg", action="append", default=[], help="extra pipeline option for the e2e runs")
    parser.add_argument("--e2e-timeout", type=float, default=240.0, help="seconds before one e2e run is stopped")
    parser.add_argument("--tiny", action="store_true", help="seconds-long run: few rows, short timings")
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args(argv)
    args.e2e_device = args.e2e_device or args.device
    if args.tiny:
        args.batch_sizes, args.min_seconds, args.repeats = [4, 8], 0.05, 1
        args.e2e_configs, args.rows_per_worker, args.shard_rows = ["1", "2", "2s@4"], 24, 12
        if args.device == "cpu":
            args.precisions, args.e2e_precision = ["fp32"], "fp32"
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from model.policy import plan_here

    device = plan_here(device=args.device).device
    shared = find_shared(args.shared)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="osnet-gpu-bench-")) if args.tiny else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="osnet-gpu-bench-"))
    result: dict[str, Any] = {"meta": {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/gpu_benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
        "args": vars(args), "machine": machine_info(), "device_info": device_info(device),
        "git": git_revision(), "shared": str(shared) if shared else None,
    }}
    pipeline_batch = plan_here("auto", args.e2e_device, args.e2e_precision).batch_size
    log(f"device {result['meta']['device_info']}; results to {out}; temporary files in {workdir}")

    def save() -> None:
        result["summary"] = summarise(result, pipeline_batch)
        (out / "gpu_latest.json").write_text(json.dumps(result, indent=1))
        (out / "gpu_latest.md").write_text(markdown(result))

    try:
        seeds, source = seed_rows(shared)
        result["meta"]["crops"] = source
        weights, weights_source = bench_weights(shared, MODEL_ARCH, None, workdir)
        result["meta"]["weights"] = weights_source
        for section in args.sections:
            log(f"section {section}")
            started = time.perf_counter()
            try:
                if section == "parity":
                    result["parity"] = run_parity(shared, device, pipeline_batch)
                elif section == "model":
                    from transforms.crop_codec import decode_crop

                    crops = [decode_crop(row[-1]) for row in seeds]
                    result["model"] = run_model(crops, weights, device, args.precisions, args.batch_sizes,
                                                args.min_seconds, args.repeats, args.e2e_precision)
                elif section == "e2e":
                    def progress(section_result: dict[str, Any]) -> None:
                        result["e2e"] = section_result
                        save()

                    result["e2e"] = run_e2e(args, seeds, weights, workdir, progress)
                else:
                    raise ValueError(f"unknown section {section!r}")
            except Exception:  # keep the other sections' figures
                result.setdefault("failures", {})[section] = traceback.format_exc()[-4000:]
                log(f"section {section} failed:\n{result['failures'][section]}")
            result.setdefault("section_seconds", {})[section] = round(time.perf_counter() - started, 1)
            save()
    finally:
        if args.keep_temp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(result), flush=True)
    return 1 if result.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
