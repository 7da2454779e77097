#!/usr/bin/env python
"""Throughput and memory benchmark of osnet-beam (issue 6); see bench/README.md.

Two modes:

``--mode bench`` (default, about 6 minutes here): one table of N crops (the real crops of
``../shared`` replicated, else synthetic ones) measured, side by side in one invocation, by

- ``original_loop``: the original tool's per-crop loop: Pillow resize -> tensor -> normalise ->
  ``model(1 crop)`` in torch eager, one crop per forward pass;
- ``model_only``: each backend (torch eager, ONNX Runtime) on preprocessed batches of several
  sizes (no decoding, no resizing: the network alone);
- ``e2e``: the whole pipeline (CSV in, Parquet features out) on Beam's DirectRunner. Its
  steady-state rate is timed from the first encoded row to the last one (see "Method" in
  bench/README.md); start-up (imports, checks, model load, first batch) and the tail (closing
  and renaming the output shards) are reported apart.

Every measurement runs in its own subprocess, so its peak RSS is its own; the repeats of the
different modes are interleaved (loop, torch, onnxruntime, e2e, loop, ...) so that a change of
machine load hits every mode alike, and ratios are also given per repeat ("paired"). Results go
to ``--out`` (default bench/results): ``latest.json``, ``latest.png``, ``latest.md``.

``--mode scale``: 100k rows (about 10% bad rows of every kind in tests/bad_cells.py that a CSV
file can hold, plus broken CSV records and bad column values) in CSV shards, through the
pipeline's command line with the bundled osnet_x0_25 weights; reports wall time and the peak RSS
of the whole process tree, and checks that every row came out exactly once: as a feature row, or
as an error row with its reason and its original data. Results: ``scale_latest.json``/``.png``.

``--mode all`` runs both. ``--tiny`` shrinks everything to seconds (the smoke test uses it).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import datetime
import glob
import io
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if sys.path and Path(sys.path[0]).resolve() == BENCH_DIR:
    sys.path.pop(0)  # run as a script: import this folder as the package ``bench``, not loose files
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

csv.field_size_limit(sys.maxsize)

DEFAULT_OUT = BENCH_DIR / "results"
COLUMNS = ["frame", "track_id", "camera", "file", "feature_vector"]
SEED_TABLE = Path("data") / "seed_format" / "real_crops.csv"
SHARED_WEIGHTS = {"osnet_ibn_x1_0": Path("weights") / "osnet_ibn_x1_0_random.pth"}
BENCH_ARCH = "osnet_ibn_x1_0"
#: ``--models`` names: (arch, weights relative to ../shared, or None for the bundled file). The
#: default runs the weights users get by default (model zoo, denormal-laden), the trained x1.0
#: stand-in and the product's x1.0 IBN architecture, each measured side by side in one invocation.
MODELS = {
    "x0_25_msmt17": ("osnet_x0_25", None),
    "x1_0_market": ("osnet_x1_0", Path("weights") / "osnet_x1_0_market1501_from_int8.pth"),
    "ibn_x1_0": ("osnet_ibn_x1_0", Path("weights") / "osnet_ibn_x1_0_random.pth"),
}
DEFAULT_MODELS = list(MODELS)
#: model-only variants (``--backends``): the product's runtimes, today's ORT without flushing
#: denormals (the reference of issue 13), and the opt-in CPU bf16 mode (where the CPU has it).
BACKEND_VARIANTS = ("torch", "onnxruntime", "onnxruntime_noflush", "openvino_bf16")
DEFAULT_BACKENDS = ["torch", "onnxruntime_noflush", "onnxruntime", "openvino_bf16"]
TARGET_FLUSH_X0_25 = 3.5  # ORT fp32 with flushing vs without, bundled default weights, model only
TARGET_E2E_VS_MODEL_X0_25 = 0.7
TARGET_VS_LOOP_X0_25 = 10.0
TARGET_BF16_VS_FP32 = 2.0  # trained x1.0 stand-in
RESULT_MARKER = "@@BENCH_RESULT@@ "
TARGET_VS_LOOP = 3.5
TARGET_VS_MODEL = 0.85
#: A gap between two encoded rows longer than this starts a new batch (rows of one batch leave
#: RunInference microseconds apart; a batch takes milliseconds at least).
BATCH_GAP_S = 0.002
#: Foreign CPU load (cores busy with other processes, on average) above which a run is flagged.
NOISY_CORES = 0.25
README_BEGIN = "<!-- latest-figures:begin -->"
README_END = "<!-- latest-figures:end -->"


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
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


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def find_shared(requested: Optional[str]) -> Optional[Path]:
    """--shared PATH, else $OSNET_SHARED_DIR, else ../shared next to the repository; None if absent."""
    candidates = [requested] if requested else [os.environ.get("OSNET_SHARED_DIR"), str(REPO_ROOT.parent / "shared")]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(git("status", "--porcelain").splitlines())}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), "")
        info["avx2"] = " avx2" in flags
        info["avx512f"] = " avx512f" in flags
    with contextlib.suppress(Exception):
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    for package in ("torch", "onnxruntime", "apache_beam", "numpy", "PIL", "pyarrow"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            name = {"PIL": "pillow", "apache_beam": "apache-beam"}.get(package, package)
            info[f"{package}_version"] = version(name)
    return info


# ------------------------------------------------------------------------------------------------
# input data
# ------------------------------------------------------------------------------------------------
def seed_rows(shared: Optional[Path]) -> tuple[list[list[Any]], str]:
    """Rows ``[frame, track_id, camera, file, cell]``: the real seed table, or synthetic crops."""
    if shared is not None and (shared / SEED_TABLE).is_file():
        with open(shared / SEED_TABLE, newline="") as stream:
            reader = csv.DictReader(stream, quoting=csv.QUOTE_NONNUMERIC)
            rows = [[int(r["frame"]), int(r["track_id"]), r["camera"], r["file"], r["feature_vector"]] for r in reader]
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


def write_bench_table(path: Path, n_rows: int, seeds: list[list[Any]], first: int = 0) -> None:
    """N rows in the producer's CSV format: the seed rows repeated, frame and file made unique
    (rows ``first`` to ``first + N - 1`` of the endless table, for shards of one table)."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(COLUMNS)
        for index in range(first, first + n_rows):
            frame, track, camera, name, cell = seeds[index % len(seeds)]
            writer.writerow([index, track, camera, f"{name}#{index // len(seeds)}", cell])


def bench_weights(shared: Optional[Path], arch: str, requested: Optional[str], workdir: Path) -> tuple[str, str]:
    """(path, description) of the weights: --weights, the shared file, the bundled x0_25, or random."""
    if requested:
        return requested, f"--weights {requested}"
    if arch == "osnet_x0_25":
        from weights import BUNDLED_WEIGHTS

        return BUNDLED_WEIGHTS, "bundled osnet_x0_25 MSMT17 weights"
    if shared is not None and arch in SHARED_WEIGHTS and (shared / SHARED_WEIGHTS[arch]).is_file():
        path = shared / SHARED_WEIGHTS[arch]
        return str(path), f"shared {path}"
    import torch

    from model.osnet import build_osnet

    torch.manual_seed(0)
    path = workdir / f"{arch}_random_init.pth"
    torch.save(build_osnet(arch).state_dict(), path)
    return str(path), f"{arch} with random initialisation (seed 0), saved to a temporary file"


# ------------------------------------------------------------------------------------------------
# children: one measurement each, in a fresh process
# ------------------------------------------------------------------------------------------------
def _load_crops(table: str, n: int) -> list:
    from transforms.crop_codec import decode_crop

    crops = []
    with open(table, newline="") as stream:
        for row in csv.DictReader(stream, quoting=csv.QUOTE_NONNUMERIC):
            crops.append(decode_crop(row["feature_vector"]))
            if len(crops) == n:
                break
    return crops


def _rusage() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"ru_maxrss_mb": own.ru_maxrss / 1024, "cpu_s": own.ru_utime + own.ru_stime}


def child_loop(spec: dict) -> dict:
    """The original tool's loop: one crop at a time, Pillow -> tensor -> normalise -> torch eager."""
    import numpy as np
    import torch
    from PIL import Image

    from model.checkpoint import load_osnet
    from model.preprocess import IMAGENET_MEAN, IMAGENET_STD

    crops = _load_crops(spec["table"], spec["crops"])
    started = time.perf_counter()
    model = load_osnet(spec["weights"], spec["arch"]).eval()
    load_s = time.perf_counter() - started
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def features(crop: np.ndarray) -> np.ndarray:
        image = Image.fromarray(crop).convert("RGB").resize((128, 256), Image.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # ToTensor
        tensor = (tensor - mean) / std  # Normalize
        with torch.no_grad():
            return model(tensor.unsqueeze(0))[0].numpy()

    for crop in crops[:2]:  # warm-up
        features(crop)
    started = time.perf_counter()
    for crop in crops:
        features(crop)
    seconds = time.perf_counter() - started
    return {"crops": len(crops), "seconds": seconds, "crops_per_s": len(crops) / seconds,
            "load_s": load_s, "torch_threads": torch.get_num_threads(), **_rusage()}


def make_backend(module: Any, variant: str, threads: Optional[int]) -> Any:
    """A model-only variant of :data:`BACKEND_VARIANTS` on CPU."""
    from model.runtimes import create_backend
    from model.runtimes.onnx_runtime import OnnxRuntimeBackend

    if variant == "onnxruntime_noflush":
        return OnnxRuntimeBackend(module, "cpu", threads, flush_denormals=False)
    if variant == "openvino_bf16":
        return create_backend(module, backend="auto", device="cpu", precision="bf16", threads=threads)
    return create_backend(module, backend=variant, device="cpu", threads=threads)


def child_model(spec: dict) -> dict:
    """One backend on preprocessed batches: images per second at each batch size; for reduced
    precision also the cosine of its features to ONNX Runtime fp32's on the same images."""
    import numpy as np

    from model.runtimes import create_backend
    from model.checkpoint import load_osnet
    from model.preprocess import preprocess_batch

    crops = _load_crops(spec["table"], spec["images"])
    batch = preprocess_batch(crops)
    started = time.perf_counter()
    module = load_osnet(spec["weights"], spec["arch"])
    backend = make_backend(module, spec["backend"], spec.get("threads"))
    create_s = time.perf_counter() - started
    per_size = {}
    for size in spec["batch_sizes"]:
        backend(batch[:size])  # warm-up: first run at a new shape allocates
        started = time.perf_counter()
        for start in range(0, len(batch), size):
            backend(batch[start : start + size])
        seconds = time.perf_counter() - started
        per_size[str(size)] = len(batch) / seconds
    extra: dict[str, Any] = {}
    if spec["backend"] == "torch":
        import torch

        extra["threads"] = torch.get_num_threads()
    else:
        extra["threads"] = getattr(backend, "threads", None)
    if spec["backend"] == "openvino_bf16":
        fp32 = create_backend(module, backend="onnxruntime", device="cpu")(batch).astype(np.float64)
        low = backend(batch).astype(np.float64)
        cosine = np.sum(fp32 * low, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(low, axis=1))
        extra["cosine_vs_fp32"] = {"min": float(cosine.min()), "median": float(np.median(cosine))}
    return {"images": len(batch), "img_per_s": per_size, "create_s": create_s, **extra, **_rusage()}


def child_stages(spec: dict) -> dict:
    """Per-row cost of the steps around the model, single-threaded: CSV parse, decode, resize+normalise;
    and resize+normalise as the CPU backends' worker threads run it (wall time per crop)."""
    import numpy as np

    from model.preprocess import preprocess_batch
    from transforms import csv_records
    from transforms.crop_codec import decode_crop

    n = spec["rows"]
    with open(spec["table"], newline="", encoding="utf-8") as stream:
        next(csv_records.iter_raw_records(stream))
        started = time.perf_counter()
        records = [r for _, r in zip(range(n), csv_records.iter_records(stream, len(COLUMNS)))]
        csv_s = (time.perf_counter() - started) / len(records)
    cells = [r.values[-1] for r in records]
    started = time.perf_counter()
    crops = [decode_crop(cell) for cell in cells]
    decode_s = (time.perf_counter() - started) / len(cells)
    preprocess_batch(crops[:8])
    started = time.perf_counter()
    for start in range(0, len(crops), 8):
        preprocess_batch(crops[start : start + 8])
    preprocess_s = (time.perf_counter() - started) / len(crops)
    # The same preprocessing as the CPU backends now run it: crop by crop on their worker threads
    # (one per core; here without the network, so wall time per crop over every core).
    from model.runtimes.cpu import default_threads as _default_threads, map_crops as _map_crops, network_pool as _network_pool

    pool = _network_pool(_default_threads(), "bench-preprocess")
    one = lambda crop: np.zeros((1, 512), np.float32) + preprocess_batch([crop])[0, 0, 0, 0]  # noqa: E731
    _map_crops(pool, one, crops[:8])
    started = time.perf_counter()
    _map_crops(pool, one, crops)
    pooled_s = (time.perf_counter() - started) / len(crops)
    pool.shutdown()
    return {"rows": len(records), "csv_parse_ms_per_row": csv_s * 1e3, "decode_ms_per_row": decode_s * 1e3,
            "preprocess_ms_per_crop": preprocess_s * 1e3, "preprocess_in_worker_threads_wall_ms_per_crop": pooled_s * 1e3,
            "worker_threads": _default_threads(), **_rusage()}


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


def child_e2e(spec: dict) -> dict:
    """The pipeline, exactly as ``python -m pipeline`` builds it, plus a probe on the encoded rows."""
    import psutil

    entered = time.perf_counter()
    since_process_start = time.time() - psutil.Process().create_time()
    import apache_beam as beam
    from apache_beam.options.pipeline_options import SetupOptions

    from bench import _probe
    from pipeline.build import build_pipeline, plan_job
    from pipeline.options import OsNetOptions
    from pipeline.run import job_counters

    imported = time.perf_counter()
    argv = ["--input", spec["table"], "--output", spec["output"], "--weights", spec["weights"],
            "--arch", spec["arch"], *spec.get("pipeline_args", [])]
    options = OsNetOptions(argv)
    options.view_as(SetupOptions).save_main_session = False
    plan = plan_job(options)
    planned = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    graph = build_pipeline(pipeline, options, plan)
    stamp_dir = spec.get("stamp_dir")  # rows encoded in other processes: wall-clock stamps in files
    if stamp_dir:
        _ = graph["features"] | "BenchProbe" >> beam.ParDo(_probe.StampToFiles(stamp_dir))
    else:
        _ = graph["features"] | "BenchProbe" >> beam.FlatMap(_probe.stamp)
    result = pipeline.run()
    result.wait_until_finish()
    finished = time.perf_counter()
    counters = job_counters(result)
    if stamp_dir:  # wall clock -> this process's perf_counter clock
        offset = time.perf_counter() - time.time()
        stamps = [s + offset for s in _probe.read_stamp_files(stamp_dir)]
    else:
        stamps = sorted(_probe.STAMPS)
    rows = len(stamps)
    origin = entered - since_process_start  # process start on the perf_counter clock
    rates = steady_rate(stamps)
    sizes = rates.pop("batches")
    return {
        "rows": spec["rows"],
        "rows_encoded": rows,
        "counters": counters,
        **rates,
        "overall_rows_per_s": rows / (finished - origin),
        "wall_s": finished - origin,
        "startup_s": stamps[0] - origin if stamps else None,
        "import_s": imported - origin,
        "plan_s": planned - imported,
        "first_row_after_run_s": stamps[0] - planned if stamps else None,
        "tail_s": finished - stamps[-1] if stamps else None,
        **central_rate(stamps),
        "batch_count": len(sizes),
        "batch_size_median": statistics.median(sizes) if sizes else None,
        "batch_size_histogram": dict(collections.Counter(sizes).most_common(8)),
        "pipeline_args": spec.get("pipeline_args", []),
        **_rusage(),
    }


CHILDREN = {"loop": child_loop, "model": child_model, "stages": child_stages, "e2e": child_e2e}


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = CHILDREN[spec["kind"]](spec)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# parent: run a child, watch its process tree
# ------------------------------------------------------------------------------------------------
def _busy(times: Any) -> float:
    return sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    proc.kill()
    proc.wait()


def _watch(proc: subprocess.Popen, started: float, poll_s: float, timeout_s: Optional[float], label: str,
           err_path: Path) -> tuple[int, int, list]:
    """Poll the RSS of ``proc``'s process tree until it exits: (peak bytes, samples, timeline)."""
    import psutil

    root = psutil.Process(proc.pid)
    peak, samples, timeline, next_timeline = 0, 0, [], 0.0
    while proc.poll() is None:
        total = 0
        with contextlib.suppress(psutil.Error):
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        peak, samples = max(peak, total), samples + 1
        now = time.perf_counter() - started
        if now >= next_timeline:
            timeline.append((round(now, 2), round(total / 2**20, 1)))
            next_timeline = now + max(1.0, now / 200)  # at most a few hundred points
        if timeout_s and now > timeout_s:
            raise RuntimeError(f"{label}: timed out after {timeout_s:.0f}s (logs: {err_path})")
        time.sleep(poll_s)
    return peak, samples, timeline


def run_measured(cmd: list[str], label: str, workdir: Path, poll_s: float = 0.5,
                 timeout_s: Optional[float] = None, env: Optional[dict] = None) -> dict[str, Any]:
    """Run ``cmd``; its wall time, the peak RSS of its process tree, CPU used by it and by others."""
    import psutil

    out_path, err_path = workdir / f"{label}.stdout", workdir / f"{label}.stderr"
    me = psutil.Process()
    cpu0, self0 = psutil.cpu_times(), me.cpu_times()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO_ROOT, env=env)
        try:
            peak, samples, timeline = _watch(proc, started, poll_s, timeout_s, label, err_path)
        except BaseException:  # interrupted or timed out: take the child (and what it started) down too
            _kill_tree(proc)
            raise
    wall = time.perf_counter() - started
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, self1 = psutil.cpu_times(), me.cpu_times()
    child_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    own_cpu = (self1.user + self1.system) - (self0.user + self0.system)
    foreign = max(0.0, _busy(cpu1) - _busy(cpu0) - child_cpu - own_cpu)
    stdout = out_path.read_text()
    if proc.returncode != 0:
        tail = "".join(err_path.read_text().splitlines(True)[-30:])
        raise RuntimeError(f"{label} failed with exit status {proc.returncode}:\n{tail}")
    result = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
    return {
        "label": label,
        "wall_s": wall,
        "peak_tree_rss_mb": peak / 2**20,
        "rss_samples": samples,
        "rss_timeline_mb": timeline,
        "child_cpu_s": child_cpu,
        "foreign_cpu_s": foreign,
        "foreign_cores": foreign / wall if wall > 0 else 0.0,
        "loadavg_before": load0[0],
        "loadavg_after": os.getloadavg()[0],
        "result": result,
        "stdout": stdout,
    }


def busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy by every process on the machine, averaged over ``seconds``."""
    import psutil

    before = psutil.cpu_times()
    time.sleep(seconds)
    return (_busy(psutil.cpu_times()) - _busy(before)) / seconds


def wait_for_quiet(limit_s: float, threshold: float = NOISY_CORES) -> dict[str, float]:
    """Wait (at most ``limit_s``) until other processes leave the CPU alone; says how long and how busy."""
    started = time.perf_counter()
    busy = busy_cores()
    announced = False
    while busy > threshold and time.perf_counter() - started < limit_s:
        if not announced:
            log(f"  machine busy ({busy:.2f} cores used by other processes): waiting up to {limit_s:.0f}s")
            announced = True
        time.sleep(4.0)
        busy = busy_cores()
    return {"waited_s": round(time.perf_counter() - started, 1), "busy_cores_before": round(busy, 2)}


QUIET_WAIT_S = 0.0  # set from --quiet-wait


def run_child(kind: str, spec: dict, label: str, workdir: Path, timeout_s: Optional[float] = None) -> dict[str, Any]:
    quiet = wait_for_quiet(QUIET_WAIT_S) if QUIET_WAIT_S > 0 else {}
    spec = {"kind": kind, **spec}
    spec_path = workdir / f"{label}.json"
    spec_path.write_text(json.dumps(spec))
    measured = run_measured([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)], label, workdir,
                            timeout_s=timeout_s)
    if measured["result"] is None:
        raise RuntimeError(f"{label}: no result line in its output")
    measured.pop("stdout")
    measured.pop("rss_timeline_mb")
    measured.update(quiet)
    # the child's own high-water mark is exact; the tree poll (twice a second, cheap enough not to
    # disturb the measurement) can miss a short peak, but sees the children a child may start
    measured["peak_rss_mb"] = max(measured["peak_tree_rss_mb"], measured["result"].get("ru_maxrss_mb", 0.0))
    flag = " (NOISY: other processes used %.2f cores)" % measured["foreign_cores"] if measured["foreign_cores"] > NOISY_CORES else ""
    log(f"  {label}: {measured['wall_s']:.1f}s, peak RSS {measured['peak_rss_mb']:.0f} MB{flag}")
    return measured


# ------------------------------------------------------------------------------------------------
# mode bench
# ------------------------------------------------------------------------------------------------
def bench_models(args: argparse.Namespace, shared: Optional[Path], workdir: Path) -> list[tuple[str, str, str, str]]:
    """(name, arch, weights path, description) of each model to measure: ``--models``, or the one
    model ``--arch``/``--weights`` name."""
    if args.models is None:
        arch, weights = args.arch, args.weights
        path, source = bench_weights(shared, arch, weights, workdir)
        name = "x0_25_msmt17" if arch == "osnet_x0_25" and not weights else arch  # the bundled weights
        return [(name, arch, path, source)]
    chosen = []
    for name in args.models:
        arch, relative = MODELS[name]
        if relative is not None and shared is not None and (shared / relative).is_file():
            path, source = str(shared / relative), f"shared {shared / relative}"
        else:
            path, source = bench_weights(shared, arch, None, workdir)
        chosen.append((name, arch, path, source))
    return chosen


def run_bench(args: argparse.Namespace, shared: Optional[Path], workdir: Path) -> dict[str, dict[str, Any]]:
    """Every model of :func:`bench_models`, one after the other; within a model the repeats of its
    modes are interleaved. Returns {model name: summary}."""
    from model.policy import cpu_supports_bf16

    seeds, source = seed_rows(shared)
    n_table = max(args.e2e_rows, args.loop_crops, args.model_images, args.stage_rows)
    table = workdir / "bench_table.csv"
    write_bench_table(table, n_table, seeds)
    log(f"table: {n_table} rows ({table.stat().st_size / 2**20:.1f} MB), {source}")
    backends = list(args.backends)
    skipped = {}
    if "openvino_bf16" in backends and not cpu_supports_bf16():
        backends.remove("openvino_bf16")
        skipped["openvino_bf16"] = "this CPU has no AVX512-BF16/AMX"
        log("openvino_bf16 skipped: this CPU has no AVX512-BF16/AMX")
    results = {}
    for name, arch, weights, weights_source in bench_models(args, shared, workdir):
        log(f"model {name}: {arch}, weights: {weights_source}")
        common = {"table": str(table), "weights": weights, "arch": arch}
        runs: dict[str, list] = collections.defaultdict(list)
        for repeat in range(args.repeats):
            log(f"{name}: repeat {repeat + 1}/{args.repeats}")
            runs["loop"].append(run_child("loop", {**common, "crops": args.loop_crops}, f"{name}_loop_{repeat}", workdir))
            sizes = args.batch_sizes if repeat % 2 == 0 else list(reversed(args.batch_sizes))
            order = backends if repeat % 2 == 0 else list(reversed(backends))
            for backend in order:
                spec = {**common, "backend": backend, "batch_sizes": sizes, "images": args.model_images,
                        "threads": args.threads}
                runs[f"model_{backend}"].append(run_child("model", spec, f"{name}_model_{backend}_{repeat}", workdir))
            output = workdir / f"e2e_out_{repeat}"
            spec = {**common, "rows": args.e2e_rows, "output": str(output), "pipeline_args": args.e2e_arg}
            runs["e2e"].append(run_child("e2e", spec, f"{name}_e2e_{repeat}", workdir))
            shutil.rmtree(output, ignore_errors=True)
            if repeat == 0:
                runs["stages"].append(run_child("stages", {**common, "rows": args.stage_rows}, f"{name}_stages", workdir))
        summary = summarise_bench(args, runs, source, weights_source, arch=arch, backends=backends, name=name)
        summary["skipped_backends"] = skipped
        results[name] = summary
    return results


def summarise_bench(args: argparse.Namespace, runs: dict[str, list], source: str, weights_source: str,
                    arch: Optional[str] = None, backends: Optional[Sequence[str]] = None,
                    name: Optional[str] = None) -> dict[str, Any]:
    arch = arch or args.arch
    backends = list(args.backends if backends is None else backends)
    def results(key: str, field: str) -> list:
        return [run["result"][field] for run in runs[key]]

    def rss(key: str) -> dict:
        return stats([run["peak_rss_mb"] for run in runs[key]])

    loop = results("loop", "crops_per_s")
    out: dict[str, Any] = {"original_loop": {
        "what": "per-crop loop: Pillow resize -> tensor -> normalise -> torch eager model(1 crop)",
        "crops": args.loop_crops,
        "crops_per_s": stats(loop),
        "torch_threads": runs["loop"][0]["result"]["torch_threads"],
        "peak_rss_mb": rss("loop"),
    }}
    model: dict[str, Any] = {}
    candidates = []  # (median img/s, backend, batch size, values): what the pipeline runs by default
    per_values: dict[tuple[str, int], list] = {}
    for backend in backends:
        key = f"model_{backend}"
        per_size = {}
        for size in args.batch_sizes:
            values = [r["img_per_s"][str(size)] for r in (run["result"] for run in runs[key])]
            per_size[str(size)] = stats(values)
            per_values[(backend, size)] = values
            if backend in ("torch", "onnxruntime"):
                candidates.append((per_size[str(size)]["median"], backend, size, values))
        model[backend] = {
            "img_per_s": per_size,
            "threads": runs[key][0]["result"].get("threads"),
            "create_s": stats(results(key, "create_s")),
            "peak_rss_mb": rss(key),
        }
        if "cosine_vs_fp32" in runs[key][0]["result"]:
            model[backend]["cosine_vs_fp32"] = runs[key][0]["result"]["cosine_vs_fp32"]
    out["model_only"] = model
    e2e_runs = [run["result"] for run in runs["e2e"]]
    steady = [r["steady_rows_per_s"] for r in e2e_runs]
    out["e2e"] = {
        "what": "python -m pipeline's graph on the DirectRunner, CSV in, Parquet out, default options"
        + (f" plus {' '.join(args.e2e_arg)}" if args.e2e_arg else ""),
        "rows": args.e2e_rows,
        "steady_rows_per_s": stats(steady),
        "second_half_rows_per_s": stats([r["second_half_rows_per_s"] for r in e2e_runs if r["second_half_rows_per_s"]]),
        "overall_rows_per_s": stats([r["overall_rows_per_s"] for r in e2e_runs]),
        "startup_s": stats([r["startup_s"] for r in e2e_runs]),
        "import_s": stats([r["import_s"] for r in e2e_runs]),
        "plan_s": stats([r["plan_s"] for r in e2e_runs]),
        "first_row_after_run_s": stats([r["first_row_after_run_s"] for r in e2e_runs]),
        "tail_s": stats([r["tail_s"] for r in e2e_runs]),
        "wall_s": stats([r["wall_s"] for r in e2e_runs]),
        "batch_size_median": stats([r["batch_size_median"] for r in e2e_runs]),
        "batch_size_histogram": e2e_runs[0]["batch_size_histogram"],
        "counters": e2e_runs[0]["counters"],
        "peak_rss_mb": rss("e2e"),
    }
    if runs.get("stages"):
        out["stages"] = {k: v for k, v in runs["stages"][0]["result"].items()
                         if k.endswith(("_row", "_crop", "rows", "threads"))}

    best = max(candidates)
    best_median, best_backend, best_size, best_values = best
    loop_median = out["original_loop"]["crops_per_s"]["median"]
    steady_median = out["e2e"]["steady_rows_per_s"]["median"]

    def paired(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
        return stats([n / d for n, d in zip(numerators, denominators)])

    ratios: dict[str, Any] = {
        "e2e_steady_vs_original_loop": {"of_medians": steady_median / loop_median, "paired": paired(steady, loop)},
        "e2e_steady_vs_best_model_only": {"of_medians": steady_median / best_median,
                                          "paired": paired(steady, best_values),
                                          "best": f"{best_backend} batch {best_size}"},
        "e2e_overall_vs_original_loop": {"of_medians": out["e2e"]["overall_rows_per_s"]["median"] / loop_median},
        "model_only_vs_original_loop": {
            f"{backend} batch {size}": {"of_medians": median / loop_median, "paired": paired(values, loop)}
            for median, backend, size, values in candidates
        },
    }
    out["best_model_only"] = {"backend": best_backend, "batch_size": best_size, "img_per_s": stats(best_values)}
    out["ratios"] = ratios
    out["targets"] = {
        "e2e_steady_vs_original_loop": {"target": TARGET_VS_LOOP,
                                        "value": ratios["e2e_steady_vs_original_loop"]["of_medians"],
                                        "met": ratios["e2e_steady_vs_original_loop"]["of_medians"] >= TARGET_VS_LOOP},
        "e2e_steady_vs_best_model_only": {"target": TARGET_VS_MODEL,
                                          "value": ratios["e2e_steady_vs_best_model_only"]["of_medians"],
                                          "met": ratios["e2e_steady_vs_best_model_only"]["of_medians"] >= TARGET_VS_MODEL},
    }
    noise = {run["label"]: round(run["foreign_cores"], 3) for key in runs for run in runs[key]}
    out["machine_load"] = {
        "what": "average number of cores other processes kept busy during each measurement",
        "foreign_cores": noise,
        "noisy_runs": sorted(label for label, cores in noise.items() if cores > NOISY_CORES),
        "threshold_cores": NOISY_CORES,
    }
    out["runs"] = {key: [{k: v for k, v in run.items()} for run in value] for key, value in runs.items()}
    out["inputs"] = {"crops": source, "weights": weights_source, "arch": arch, "name": name or arch}
    out["issue13"] = issue13_targets(name or arch, out, per_values, steady, loop)
    return out


def issue13_targets(name: str, out: dict[str, Any], per_values: dict[tuple[str, int], list],
                    steady: Sequence[float], loop: Sequence[float]) -> dict[str, Any]:
    """Issue 13's targets for this model, each a ratio of medians and per repeat (paired), at the
    batch size the pipeline uses on CPU (32; else the largest measured)."""
    sizes = sorted({size for _, size in per_values})
    size = 32 if 32 in sizes else (sizes[-1] if sizes else None)
    checks: dict[str, Any] = {"batch_size": size}

    def ratio(key: str, numerator: Sequence[float], denominator: Sequence[float], target: float) -> None:
        value = statistics.median(numerator) / statistics.median(denominator)
        checks[key] = {"target": target, "value": value,
                       "paired": stats([n / d for n, d in zip(numerator, denominator)]), "met": value >= target}

    flush, noflush = per_values.get(("onnxruntime", size)), per_values.get(("onnxruntime_noflush", size))
    bf16 = per_values.get(("openvino_bf16", size))
    x0_25 = name == "x0_25_msmt17"
    if flush and noflush:
        ratio("ort_flush_vs_noflush_model_only", flush, noflush, TARGET_FLUSH_X0_25 if x0_25 else 0.95)
    if flush:
        ratio("e2e_vs_ort_flush_model_only", steady, flush, TARGET_E2E_VS_MODEL_X0_25 if x0_25 else TARGET_VS_MODEL)
    ratio("e2e_vs_original_loop", steady, loop, TARGET_VS_LOOP_X0_25 if x0_25 else TARGET_VS_LOOP)
    if bf16 and flush:
        ratio("bf16_vs_fp32_model_only", bf16, flush, TARGET_BF16_VS_FP32 if name == "x1_0_market" else 0.0)
        checks["bf16_cosine_vs_fp32"] = out["model_only"]["openvino_bf16"].get("cosine_vs_fp32")
    return checks


def _fmt(s: dict, digits: int = 1) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def bench_markdown(result: dict[str, Any]) -> str:
    """Issue 13's targets for every model side by side, then each model's full table."""
    models = result.get("models") or {result["bench"]["inputs"].get("name", "model"): result["bench"]}
    lines = [
        f"Measured {result['meta']['date']} on {result['meta']['machine'].get('cpu_model', '?')}, "
        f"{result['meta']['machine'].get('cores_available')} cores; {result['meta']['args']['repeats']} repeats, "
        "median (min-max); ratios of medians, paired per repeat in brackets.",
        "",
        "| model | target | required | measured | paired per repeat | met |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"ort_flush_vs_noflush_model_only": "ORT fp32 with denormals flushed vs without, model only",
              "e2e_vs_ort_flush_model_only": "end to end vs ORT fp32 (flushed) model only",
              "e2e_vs_original_loop": "end to end vs original loop",
              "bf16_vs_fp32_model_only": "CPU bf16 (OpenVINO) vs ORT fp32, model only"}
    for name, b in models.items():
        checks = b.get("issue13", {})
        for key, label in labels.items():
            if key in checks:
                c = checks[key]
                met = "yes" if c["met"] else "**no**"
                lines.append(f"| {name} | {label} (batch {checks['batch_size']}) | >= {c['target']}x | "
                             f"{c['value']:.2f}x | {_fmt(c['paired'], 2)} | {met} |")
        cosine = checks.get("bf16_cosine_vs_fp32")
        if cosine:
            lines.append(f"| {name} | bf16 cosine to ORT fp32 on the model-only crops: min / median | "
                         f"(min >= 0.998 on trained weights) | "
                         f"{cosine['min']:.5f} / {cosine['median']:.5f} | | |")
    for name, b in models.items():
        lines += ["", f"### {name}", "", _model_markdown(result, b)]
    return "\n".join(lines) + "\n"


def _model_markdown(result: dict[str, Any], b: dict[str, Any]) -> str:
    fmt = _fmt

    def mb(s: dict) -> str:
        return f"{s['max']:.0f}" if s and s.get("max") is not None else "n/a"

    loop = b["original_loop"]["crops_per_s"]["median"]
    lines = [
        f"Model {b['inputs']['arch']} 256x128, weights: {b['inputs']['weights']}; {b['inputs']['crops']}.",
        "",
        "| mode | throughput (per s) | vs original loop | peak RSS (MB) |",
        "|---|---|---|---|",
        f"| original per-crop loop (torch eager, 1 crop per forward) | {fmt(b['original_loop']['crops_per_s'])} | 1.00x | "
        f"{mb(b['original_loop']['peak_rss_mb'])} |",
    ]
    for backend, data in b["model_only"].items():
        for size, s in data["img_per_s"].items():
            lines.append(f"| model only, {backend} ({data['threads']} threads), batch {size} | {fmt(s)} | "
                         f"{s['median'] / loop:.2f}x | {mb(data['peak_rss_mb'])} |")
    e = b["e2e"]
    lines += [
        f"| **pipeline end to end, steady state** (DirectRunner, {e['rows']} rows) | **{fmt(e['steady_rows_per_s'])}** | "
        f"**{b['ratios']['e2e_steady_vs_original_loop']['of_medians']:.2f}x** | {mb(e['peak_rss_mb'])} |",
        f"| pipeline end to end, whole run incl. start-up | {fmt(e['overall_rows_per_s'])} | "
        f"{b['ratios']['e2e_overall_vs_original_loop']['of_medians']:.2f}x | |",
        "",
        f"Pipeline start-up (process start to first encoded row): {fmt(e['startup_s'])} s "
        f"(imports {fmt(e['import_s'])} s, input and weights checks {fmt(e['plan_s'])} s, "
        f"runner start + model load + first batch {fmt(e['first_row_after_run_s'])} s); "
        f"tail (last encoded row to job done): {fmt(e['tail_s'], 2)} s; "
        f"second half of the steady interval alone: {fmt(e['second_half_rows_per_s'])} rows/s; "
        f"RunInference batches: median {e['batch_size_median']['median']:.0f} rows.",
        "",
    ]
    t = b["targets"]
    r = b["ratios"]
    lines += [
        "| target | required | measured (ratio of medians) | paired per repeat, median (min-max) | met |",
        "|---|---|---|---|---|",
        f"| end to end vs original loop | >= {TARGET_VS_LOOP}x | {t['e2e_steady_vs_original_loop']['value']:.2f}x | "
        f"{fmt(r['e2e_steady_vs_original_loop']['paired'], 2)} | {'yes' if t['e2e_steady_vs_original_loop']['met'] else '**no**'} |",
        f"| end to end vs best model-only ({r['e2e_steady_vs_best_model_only']['best']}) | >= {TARGET_VS_MODEL}x | "
        f"{t['e2e_steady_vs_best_model_only']['value']:.2f}x | {fmt(r['e2e_steady_vs_best_model_only']['paired'], 2)} | "
        f"{'yes' if t['e2e_steady_vs_best_model_only']['met'] else '**no**'} |",
    ]
    if "stages" in b:
        s = b["stages"]
        lines += ["", f"Per-row cost outside the model (one core): CSV parse {s['csv_parse_ms_per_row']:.2f} ms, "
                      f"crop decode {s['decode_ms_per_row']:.2f} ms, resize + normalise {s['preprocess_ms_per_crop']:.2f} ms; "
                      f"resize + normalise on the backend's {s.get('worker_threads', '?')} worker threads: "
                      f"{s.get('preprocess_in_worker_threads_wall_ms_per_crop', float('nan')):.2f} ms of wall time per crop."]
    noisy = b["machine_load"]["noisy_runs"]
    if noisy:
        lines += ["", f"Machine not quiet during: {', '.join(noisy)} (other processes used more than "
                      f"{NOISY_CORES} cores on average; see machine_load in latest.json)."]
    return "\n".join(lines)


def bench_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = result["bench"]
    labels, medians, lows, highs, colours = [], [], [], [], []

    def add(label: str, s: dict, colour: str) -> None:
        labels.append(label)
        medians.append(s["median"])
        lows.append(s["median"] - s["min"])
        highs.append(s["max"] - s["median"])
        colours.append(colour)

    add("original loop (torch, 1 crop)", b["original_loop"]["crops_per_s"], "tab:gray")
    palette = {"torch": "tab:orange", "onnxruntime": "tab:blue"}
    for backend, data in b["model_only"].items():
        for size, s in data["img_per_s"].items():
            add(f"model only: {backend} bs {size}", s, palette.get(backend, "tab:purple"))
    add("pipeline e2e: steady", b["e2e"]["steady_rows_per_s"], "tab:green")
    add("pipeline e2e: whole run", b["e2e"]["overall_rows_per_s"], "tab:olive")

    fig, (ax, ax_mem) = plt.subplots(1, 2, figsize=(14, 0.42 * len(labels) + 2.2),
                                     gridspec_kw={"width_ratios": [3, 1.3]})
    y = list(range(len(labels)))[::-1]
    ax.barh(y, medians, xerr=[lows, highs], color=colours, capsize=3)
    ax.set_yticks(y, labels)
    loop = b["original_loop"]["crops_per_s"]["median"]
    best = b["best_model_only"]["img_per_s"]["median"]
    ax.axvline(TARGET_VS_LOOP * loop, ls="--", color="tab:red", label=f"target: {TARGET_VS_LOOP}x original loop")
    ax.axvline(TARGET_VS_MODEL * best, ls=":", color="tab:red", label=f"target: {TARGET_VS_MODEL}x best model-only")
    for yy, m, high in zip(y, medians, highs):
        ax.text(m + high, yy, f"  {m:.1f}", va="center", fontsize=8)
    ax.set_xlabel("crops (rows) per second: median, bars = min..max")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{b['inputs']['arch']} fp32, {result['meta']['machine'].get('cores_available')} CPU cores, "
                 f"{result['meta']['date'][:10]}", fontsize=10)
    mem_labels = ["original loop"] + [f"model {k}" for k in b["model_only"]] + ["pipeline e2e"]
    mem = [b["original_loop"]["peak_rss_mb"]["max"]] + [d["peak_rss_mb"]["max"] for d in b["model_only"].values()] + \
          [b["e2e"]["peak_rss_mb"]["max"]]
    ym = list(range(len(mem_labels)))[::-1]
    ax_mem.barh(ym, mem, color="tab:cyan")
    ax_mem.set_yticks(ym, mem_labels)
    for yy, m in zip(ym, mem):
        ax_mem.text(m, yy, f" {m:.0f}", va="center", fontsize=8)
    ax_mem.set_xlabel("peak RSS per process (MB, max of repeats)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# mode scale
# ------------------------------------------------------------------------------------------------
def _newlines(text: str) -> int:
    """Line endings as Python's universal newlines count them (\\r\\n, \\r, \\n)."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _is_csv_cell(cell: Any) -> bool:
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
    from tests.bad_cells import bad_cells

    cases = bad_cells()
    usable = [c for c in cases if _is_csv_cell(c.cell)]
    skipped = {c.name: "not representable in a CSV file (written out it would be a different, textual cell)"
               for c in cases if not _is_csv_cell(c.cell)}
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
    multiline = lambda c: isinstance(c.cell, str) and _newlines(c.cell) > 0  # noqa: E731
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
        "bad_rows": sum(1 for k in kinds if k[0] != "good"),
        "broken_csv_records": n_broken,
        "bad_column_values": placed_column,
        "bad_cell_kinds_used": len(usable),
        "bad_cell_kinds_skipped": skipped,
        "copies_of_cells_over_10_MB": huge_copies,
        "copies_of_cells_over_64_KB": large_copies,
    }
    return kinds, planned


def write_scale_table(directory: Path, kinds: list[tuple[str, Any]], seeds: list[list[Any]],
                      shards: int) -> tuple[dict[int, dict], dict[str, tuple], collections.Counter, int]:
    """Write the shards streaming; return what each bad row must come out as.

    Returns (expected error rows by frame, expected broken records by raw text -> (file, line),
    expected count per reason, number of good rows).
    """
    directory.mkdir(parents=True, exist_ok=True)
    expected_rows: dict[int, dict] = {}
    expected_broken: dict[str, tuple] = {}
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
                elif kind == "column":
                    row = [index, f"not a number {index}", camera, f"badcolumn/{index}", cell]
                    writer.writerow(row)
                    expected_rows[index] = {"reason": "bad_column_value", "row": dict(zip(COLUMNS, row))}
                    reasons["bad_column_value"] += 1
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
                line += _newlines(text)
                stream.write(text)
    return expected_rows, expected_broken, reasons, good


def verify_scale_output(output: Path, expected_rows: dict[int, dict], expected_broken: dict[str, tuple],
                        reasons: collections.Counter, good: int, n_rows: int, counters: dict[str, int]) -> dict[str, Any]:
    """Every row exactly once: a feature row (good rows) or an error row with its reason and data."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    problems: list[str] = []
    feature_frames: list[np.ndarray] = []
    bad_dims = 0
    for path in sorted(glob.glob(str(output / "features-*-of-*.parquet"))):
        for batch in pq.ParquetFile(path).iter_batches(columns=["frame", "feature_vector"], batch_size=8192):
            feature_frames.append(batch.column(0).to_numpy())
            lengths = pc.list_value_length(batch.column(1)).to_numpy()
            bad_dims += int(np.sum(lengths != 512))
            values = pc.list_flatten(batch.column(1)).to_numpy()
            if not np.all(np.isfinite(values)):
                problems.append(f"{path}: non-finite feature values")
    frames = np.concatenate(feature_frames) if feature_frames else np.empty(0, np.int64)
    feature_rows = int(frames.size)
    if bad_dims:
        problems.append(f"{bad_dims} feature rows without 512 values")
    if np.unique(frames).size != frames.size:
        problems.append("a row appears twice in the features")
    if any(int(f) in expected_rows for f in frames):
        problems.append("a bad row came out as features")
    seen_reasons: collections.Counter = collections.Counter()
    seen_rows: set[int] = set()
    seen_broken: set[str] = set()
    error_rows = 0
    for path in sorted(glob.glob(str(output / "errors-*-of-*.jsonl"))):
        with open(path, encoding="utf-8") as stream:
            for text in stream:
                if not text.strip():
                    continue
                record = json.loads(text)
                error_rows += 1
                seen_reasons[record["reason"]] += 1
                if "raw_line" in record:
                    where = expected_broken.get(record["raw_line"])
                    if where is None or record["raw_line"] in seen_broken:
                        problems.append(f"unexpected or repeated broken record {record['raw_line'][:80]!r}")
                    elif (record.get("source"), record.get("line")) != where:
                        problems.append(f"broken record {record['raw_line'][:40]!r} at {record.get('source')}:"
                                        f"{record.get('line')}, expected {where[0]}:{where[1]}")
                    seen_broken.add(record["raw_line"])
                    continue
                frame = record.get("row", {}).get("frame")
                expected = expected_rows.get(frame)
                if expected is None or frame in seen_rows:
                    problems.append(f"unexpected or repeated error row for frame {frame}: {record['reason']}")
                    continue
                seen_rows.add(frame)
                if record["reason"] != expected["reason"]:
                    problems.append(f"frame {frame} ({expected.get('kind', 'column')}): reason {record['reason']}, "
                                    f"expected {expected['reason']}")
                if record["row"] != expected["row"]:
                    problems.append(f"frame {frame} ({expected.get('kind', 'column')}): the error row does not hold "
                                    "the original data")
                if not record.get("detail"):
                    problems.append(f"frame {frame}: no detail")
    missing_rows = set(expected_rows) - seen_rows
    missing_broken = set(expected_broken) - seen_broken
    if missing_rows:
        problems.append(f"{len(missing_rows)} bad rows missing from the errors, e.g. {sorted(missing_rows)[:5]}")
    if missing_broken:
        problems.append(f"{len(missing_broken)} broken records missing from the errors")
    if feature_rows != good:
        problems.append(f"{feature_rows} feature rows, expected {good}")
    if feature_rows + error_rows != n_rows:
        problems.append(f"rows in {n_rows} != feature rows {feature_rows} + error rows {error_rows}")
    if seen_reasons != reasons:
        problems.append(f"errors per reason {dict(seen_reasons)} != injected {dict(reasons)}")
    counted = {k[len("errors_"):]: v for k, v in counters.items() if k.startswith("errors_")}
    if counters and (counted != dict(reasons) or counters.get("rows_read") != n_rows
                     or counters.get("rows_encoded") != good):
        problems.append(f"job counters {counters} disagree with the injected rows")
    return {
        "rows_in": n_rows,
        "feature_rows": feature_rows,
        "error_rows": error_rows,
        "rows_in_equals_features_plus_errors": feature_rows + error_rows == n_rows,
        "errors_per_reason": dict(sorted(seen_reasons.items())),
        "injected_per_reason": dict(sorted(reasons.items())),
        "per_reason_counts_match": seen_reasons == reasons,
        "every_error_row_holds_its_original_data": not any("original data" in p or "expected" in p for p in problems),
        "problems": problems[:50],
        "problem_count": len(problems),
        "ok": not problems,
    }


def parse_summary(stdout: str) -> dict[str, int]:
    """The counters of the job's last line: rows_read=.. decoded=.. encoded=.. errors=.. (reason=n, ..)."""
    line = next((l for l in reversed(stdout.splitlines()) if l.startswith("osnet-beam: rows_read=")), "")
    counters: dict[str, int] = {}
    match = re.search(r"rows_read=(\d+) decoded=(\d+) encoded=(\d+) errors=\d+ \(([^)]*)\)", line)
    if match:
        counters["rows_read"], counters["rows_decoded"], counters["rows_encoded"] = map(int, match.groups()[:3])
        for item in match.group(4).split(", "):
            if "=" in item:
                name, value = item.split("=")
                counters[f"errors_{name}"] = int(value)
    return counters


def run_scale(args: argparse.Namespace, shared: Optional[Path], workdir: Path) -> dict[str, Any]:
    from weights import BUNDLED_WEIGHTS

    seeds, source = seed_rows(shared)
    kinds, planned = plan_scale_rows(args.scale_rows, args.scale_bad_fraction, args.scale_large_copies,
                                     args.scale_huge_copies, args.scale_shards)
    table_dir = workdir / "scale_input"
    started = time.perf_counter()
    expected_rows, expected_broken, reasons, good = write_scale_table(table_dir, kinds, seeds, args.scale_shards)
    size = sum(p.stat().st_size for p in table_dir.iterdir())
    log(f"scale table: {args.scale_rows} rows ({args.scale_rows - good} bad) in {args.scale_shards} CSV shards, "
        f"{size / 2**30:.2f} GiB, written in {time.perf_counter() - started:.0f}s; {source}")
    output = workdir / "scale_output"
    cmd = [sys.executable, "-m", "pipeline", "--input", str(table_dir / "*.csv"), "--output", str(output),
           "--weights", args.scale_weights or BUNDLED_WEIGHTS, "--arch", args.scale_arch, *args.scale_arg]
    log("running: " + " ".join(cmd))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    measured = run_measured(cmd, "scale", workdir, timeout_s=args.scale_timeout, env=env)
    counters = parse_summary(measured["stdout"])
    log(f"  pipeline: {measured['wall_s']:.0f}s, peak RSS of the process tree {measured['peak_tree_rss_mb']:.0f} MB")
    started = time.perf_counter()
    verified = verify_scale_output(output, expected_rows, expected_broken, reasons, good, args.scale_rows, counters)
    log(f"  verified in {time.perf_counter() - started:.0f}s: {'OK' if verified['ok'] else verified['problems'][:5]}")
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(table_dir, ignore_errors=True)
    return {
        "what": "python -m pipeline on the DirectRunner (default options), CSV shards in, Parquet out",
        "command": cmd,
        "input": {**planned, "good_rows": good, "files": args.scale_shards, "bytes": size, "crops": source},
        "arch": args.scale_arch,
        "wall_s": measured["wall_s"],
        "rows_per_s": args.scale_rows / measured["wall_s"],
        "peak_tree_rss_mb": measured["peak_tree_rss_mb"],
        "rss_target_mb": 3072,
        "rss_target_met": measured["peak_tree_rss_mb"] < 3072,
        "rss_timeline_mb": measured["rss_timeline_mb"],
        "foreign_cores": measured["foreign_cores"],
        "counters": counters,
        "verification": verified,
    }


def scale_markdown(result: dict[str, Any]) -> str:
    s = result["scale"]
    v = s["verification"]
    return "\n".join([
        f"Measured {result['meta']['date']}: {s['input']['rows']} rows ({s['input']['bad_rows']} bad: "
        f"{s['input']['bad_cell_kinds_used']} kinds of bad cell, {s['input']['broken_csv_records']} broken CSV records, "
        f"{s['input']['bad_column_values']} bad column values) in {s['input']['files']} CSV shards "
        f"({s['input']['bytes'] / 2**30:.2f} GiB), model {s['arch']}.",
        "",
        "| wall time | rows/s | peak RSS, whole process tree | rows in = features + errors | per-reason counts | error rows hold original data |",
        "|---|---|---|---|---|---|",
        f"| {s['wall_s']:.0f} s | {s['rows_per_s']:.0f} | {s['peak_tree_rss_mb']:.0f} MB "
        f"({'<' if s['rss_target_met'] else '**>=**'} 3 GB target) | {v['rows_in']} = {v['feature_rows']} + {v['error_rows']}: "
        f"{'yes' if v['rows_in_equals_features_plus_errors'] else '**no**'} | "
        f"{'match' if v['per_reason_counts_match'] else '**differ**'} | "
        f"{'yes' if v['every_error_row_holds_its_original_data'] else '**no**'} |",
        "",
        "Errors per reason: " + ", ".join(f"{k}={n}" for k, n in v["errors_per_reason"].items()) + ".",
        *(["", "Problems: " + "; ".join(v["problems"][:10])] if v["problems"] else []),
    ]) + "\n"


def scale_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["scale"]
    times, rss = zip(*s["rss_timeline_mb"]) if s["rss_timeline_mb"] else ((0,), (0,))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(times, rss, color="tab:blue")
    ax.axhline(3072, ls="--", color="tab:red", label="target: 3 GB")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS of the process tree (MB)")
    ax.set_title(f"{s['input']['rows']} rows ({s['input']['bad_rows']} bad), {s['arch']}, DirectRunner: "
                 f"{s['wall_s']:.0f}s, peak {s['peak_tree_rss_mb']:.0f} MB", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def update_readme(markdown: str, begin: str, end: str) -> None:
    readme = BENCH_DIR / "README.md"
    if not readme.is_file():
        return
    text = readme.read_text()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{begin}\n{markdown}{end}{tail}")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    words = lambda text: [v for v in text.split(",") if v]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("bench", "scale", "all"), default="bench")
    parser.add_argument("--shared", help="reference material (default: $OSNET_SHARED_DIR or ../shared)")
    parser.add_argument("--out", help=f"results folder (default: {DEFAULT_OUT}; with --tiny a temporary one)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run: few crops, 1 repeat, osnet_x0_25")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", type=words, default=None,
                        help=f"models of mode bench, comma-separated, from {', '.join(MODELS)} (default: all; "
                        "x1.0 weights from ../shared, else a random initialisation)")
    parser.add_argument("--arch", default=BENCH_ARCH, help="instead of --models: one model of this architecture")
    parser.add_argument("--weights", help="instead of --models: these weights (default: ../shared's, else random init)")
    parser.add_argument("--loop-crops", type=int, default=120, help="crops per repeat of the original loop")
    parser.add_argument("--model-images", type=int, default=64, help="images per batch size per repeat, model only")
    parser.add_argument("--batch-sizes", type=ints, default=[1, 8, 16, 32, 64])
    parser.add_argument("--backends", type=words, default=DEFAULT_BACKENDS,
                        help=f"model-only variants, from {', '.join(BACKEND_VARIANTS)} (openvino_bf16 is skipped on "
                        "CPUs without AVX512-BF16/AMX)")
    parser.add_argument("--threads", type=int, default=None, help="backend threads, model only (default: the backend's)")
    parser.add_argument("--e2e-rows", type=int, default=1188, help="rows of the end-to-end table")
    parser.add_argument("--e2e-arg", action="append", default=[],
                        help="extra pipeline option for the end-to-end run, e.g. --e2e-arg=--batch_size=16")
    parser.add_argument("--stage-rows", type=int, default=198, help="rows for the per-stage costs")
    parser.add_argument("--scale-rows", type=int, default=100_000)
    parser.add_argument("--scale-bad-fraction", type=float, default=0.10)
    parser.add_argument("--scale-shards", type=int, default=8)
    parser.add_argument("--scale-large-copies", type=int, default=3, help="copies of each bad cell over 64 KB")
    parser.add_argument("--scale-huge-copies", type=int, default=1, help="copies of the 50 MB cell")
    parser.add_argument("--scale-arch", default="osnet_x0_25")
    parser.add_argument("--scale-weights", help="default: the bundled osnet_x0_25 weights")
    parser.add_argument("--scale-arg", action="append", default=[], help="extra pipeline option for mode scale")
    parser.add_argument("--scale-timeout", type=float, default=3600.0)
    parser.add_argument("--quiet-wait", type=float, default=90.0,
                        help="before each measurement, wait up to this many seconds for other processes to leave "
                        f"the CPU (below {NOISY_CORES} cores busy); 0: do not wait")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary folder (tables, logs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [m for m in (args.models or []) if m not in MODELS] + [b for b in args.backends if b not in BACKEND_VARIANTS]
    if unknown:
        parser.error(f"unknown model or backend {unknown}; models: {list(MODELS)}, backends: {list(BACKEND_VARIANTS)}")
    if args.models is None and args.arch == BENCH_ARCH and not args.weights and not args.tiny:
        args.models = DEFAULT_MODELS
    if args.tiny:
        defaults = parser.parse_args([])
        tiny = {"repeats": 1, "quiet_wait": 0.0, "loop_crops": 4, "model_images": 8, "batch_sizes": [1, 4], "e2e_rows": 100,
                "stage_rows": 8, "scale_rows": 400, "scale_shards": 2, "scale_large_copies": 1, "scale_huge_copies": 0}
        for name, value in tiny.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
        if args.arch == BENCH_ARCH and not args.weights:
            args.arch = "osnet_x0_25"
    return args


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: the running child is killed, temporary files removed


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    global QUIET_WAIT_S
    QUIET_WAIT_S = args.quiet_wait
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    shared = find_shared(args.shared)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="osnet-bench-tiny-")) if args.tiny else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="osnet-bench-"))
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "args": {k: v for k, v in vars(args).items() if k != "child"},
        "shared": str(shared) if shared else None,
        "machine": machine_info(),
        "git": git_revision(),
        "loadavg_at_start": os.getloadavg(),
    }
    log(f"results to {out}; temporary files in {workdir}")
    default_out = out.resolve() == DEFAULT_OUT.resolve() and not args.tiny
    try:
        if args.mode in ("bench", "all"):
            models = run_bench(args, shared, workdir)
            result = {"meta": meta, "bench": next(iter(models.values())), "models": models}
            (out / "latest.json").write_text(json.dumps(result, indent=1))
            markdown = bench_markdown(result)
            (out / "latest.md").write_text(markdown)
            bench_plot(result, out / "latest.png")
            if default_out:
                update_readme(markdown, README_BEGIN, README_END)
            print(markdown, flush=True)
        if args.mode in ("scale", "all"):
            result = {"meta": meta, "scale": run_scale(args, shared, workdir)}
            (out / "scale_latest.json").write_text(json.dumps(result, indent=1))
            markdown = scale_markdown(result)
            (out / "scale_latest.md").write_text(markdown)
            scale_plot(result, out / "scale_latest.png")
            if default_out:
                update_readme(markdown, README_BEGIN.replace("latest", "scale"), README_END.replace("latest", "scale"))
            print(markdown, flush=True)
            if not result["scale"]["verification"]["ok"]:
                log("scale: the output does not account for every row (see scale_latest.json)")
                return 1
    finally:
        if args.keep_temp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
