"""The measurements, each the body of one child process (``bench/child.py``): the original
per-crop loop, one backend on preprocessed batches, the per-row stage costs, the whole pipeline.

Each takes its spec (a dict) and returns a JSON-able dict. They import the product lazily, so the
child can first choose the tree it comes from (``spec["tree"]``), and each result says where it
came from (``imported_from``).
"""
from __future__ import annotations

import collections
import csv
import resource
import statistics
import sys
import tempfile
import time
from typing import Any, Optional

from bench.rates import central_rate, steady_rate
from bench.tables import COLUMNS

csv.field_size_limit(sys.maxsize)

#: model-only variants (``--backends``): the product's runtimes, today's ORT without flushing
#: denormals (the reference of issue 13), and the opt-in CPU bf16 mode (where the CPU has it).
BACKEND_VARIANTS = ("torch", "onnxruntime", "onnxruntime_noflush", "openvino_bf16")
DEFAULT_BACKENDS = ["torch", "onnxruntime_noflush", "onnxruntime", "openvino_bf16"]
PRODUCT_PACKAGES = ("model", "transforms", "pipeline")


def imported_from() -> dict[str, str]:
    """Where this process's product packages come from (a child checks it runs the tree it was given)."""
    return {name: sys.modules[name].__file__ for name in PRODUCT_PACKAGES if name in sys.modules}


def load_crops(table: str, n: int) -> list:
    from transforms.crop_codec import decode_crop

    crops = []
    with open(table, newline="") as stream:
        for row in csv.DictReader(stream, quoting=csv.QUOTE_NONNUMERIC):
            crops.append(decode_crop(row["feature_vector"]))
            if len(crops) == n:
                break
    return crops


def rusage() -> dict[str, Any]:
    """This process's peak RSS and CPU time, and where it imported the product from."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"ru_maxrss_mb": own.ru_maxrss / 1024, "cpu_s": own.ru_utime + own.ru_stime, "imported_from": imported_from()}


def child_loop(spec: dict) -> dict:
    """The original tool's loop: one crop at a time, Pillow -> tensor -> normalise -> torch eager."""
    import numpy as np
    import torch
    from PIL import Image

    from model.checkpoint import load_osnet
    from model.preprocess import IMAGENET_MEAN, IMAGENET_STD

    crops = load_crops(spec["table"], spec["crops"])
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
            "load_s": load_s, "torch_threads": torch.get_num_threads(), **rusage()}


def _runtime_names() -> tuple[Any, Any]:
    """``create_backend`` and ``OnnxRuntimeBackend`` of the tree under test: ``model.runtimes``, or
    ``model.backends`` in baseline trees from before the runtimes were split one a module."""
    try:
        from model.runtimes import create_backend
        from model.runtimes.onnx_runtime import OnnxRuntimeBackend
    except ImportError:
        from model.backends import OnnxRuntimeBackend, create_backend
    return create_backend, OnnxRuntimeBackend


def make_backend(module: Any, variant: str, threads: Optional[int]) -> Any:
    """A model-only variant of :data:`BACKEND_VARIANTS` on CPU."""
    create_backend, OnnxRuntimeBackend = _runtime_names()

    if variant == "onnxruntime_noflush":
        return OnnxRuntimeBackend(module, "cpu", threads, flush_denormals=False)
    if variant == "openvino_bf16":
        return create_backend(module, backend="auto", device="cpu", precision="bf16", threads=threads)
    return create_backend(module, backend=variant, device="cpu", threads=threads)


def child_model(spec: dict) -> dict:
    """One backend on preprocessed batches: images per second at each batch size; for reduced
    precision also the cosine of its features to ONNX Runtime fp32's on the same images."""
    import numpy as np

    from model.checkpoint import load_osnet
    from model.preprocess import preprocess_batch

    create_backend, _ = _runtime_names()
    crops = load_crops(spec["table"], spec["images"])
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
        from testkit.reference import row_cosine

        fp32 = create_backend(module, backend="onnxruntime", device="cpu")(batch)
        cosine = row_cosine(backend(batch), fp32)
        extra["cosine_vs_fp32"] = {"min": float(cosine.min()), "median": float(np.median(cosine))}
    return {"images": len(batch), "img_per_s": per_size, "create_s": create_s, **extra, **rusage()}


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
    from model.runtimes.cpu import default_threads, map_crops, network_pool

    pool = network_pool(default_threads(), "bench-preprocess")
    one = lambda crop: np.zeros((1, 512), np.float32) + preprocess_batch([crop])[0, 0, 0, 0]  # noqa: E731
    map_crops(pool, one, crops[:8])
    started = time.perf_counter()
    map_crops(pool, one, crops)
    pooled_s = (time.perf_counter() - started) / len(crops)
    pool.shutdown()
    return {"rows": len(records), "csv_parse_ms_per_row": csv_s * 1e3, "decode_ms_per_row": decode_s * 1e3,
            "preprocess_ms_per_crop": preprocess_s * 1e3, "preprocess_in_worker_threads_wall_ms_per_crop": pooled_s * 1e3,
            "worker_threads": default_threads(), **rusage()}



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
    import pipeline.run as runs

    if hasattr(runs, "job_options"):  # what python -m pipeline sets (an older tree: by hand)
        options = runs.job_options(argv)
    else:
        options = OsNetOptions(argv)
        options.view_as(SetupOptions).save_main_session = False
    plan = plan_job(options)
    planned = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    graph = build_pipeline(pipeline, options, plan)
    stamp_dir = spec.get("stamp_dir")  # rows encoded in other processes: wall-clock stamps in files
    if stamp_dir is None and any("multi_processing" in arg for arg in spec.get("pipeline_args", [])):
        stamp_dir = tempfile.mkdtemp(prefix="osnet-bench-stamps-")
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
        **rusage(),
    }


CHILDREN = {"loop": child_loop, "model": child_model, "stages": child_stages, "e2e": child_e2e}
