#!/usr/bin/env python
"""Measured what-ifs for the pipeline's speed: the changes recommended in bench/README.md, tried
by patching ``model`` in a child process (nothing in model/ is changed by this script).

    python bench/variants.py e2e base fused par1 fused_par1          # pipeline end to end, steady rows/s
    python bench/variants.py e2e base fused_par1:--batch_size=32     # ...with extra pipeline options
    python bench/variants.py model                                   # model only: ORT threading schemes

Variants (combine with ``_``, e.g. ``fused_par1``):

- ``base``: the code as it is (since commit 1fa6355 that includes R1 = ``par1`` and R2 in a
  bit-identical form; the other variants patch on top of it).
- ``fused``: preprocessing that writes each resized crop straight into the float32 NCHW batch with
  one multiply-add per channel (same values to 5e-7) instead of stack -> astype -> /255 -> -mean ->
  /std -> transpose -> copy.
- ``par1`` / ``par2``: ONNX Runtime with one intra-op thread per session call and the batch run as
  sub-batches of 1 (2) crops on one Python thread per core, concurrently (ORT releases the GIL);
  instead of one call per batch with an intra-op pool of all cores.
- ``nospin``: ORT's intra-op threads do not spin-wait between calls (the code's default since
  commit c4db95f: then the same as ``base``).
- ``overlap``: the encoder's ``overlap_preprocessing`` (a helper thread resizes the next chunk while
  the network runs the current one; on by default on CUDA only) turned on for CPU. Refused since
  the pipeline runs ``FeatureEngine``, which has no prefetcher (it is ``OsNetEncoder``'s option).
- ``inpool`` (with ``par1``): each of those threads also resizes its own crop before running it,
  so resizing runs on both cores, between inferences, instead of on the pipeline's thread.
- ``full``: RunInference batches of exactly ``--batch_size`` rows (``BatchElements``' minimum set to
  its maximum) instead of anything from a quarter of it up (the code's default since R4: then
  the same as ``base``).
- ``null``: a model that returns zeros at once: what the pipeline costs around the model.
- ``callerresize``: the handler resizes the whole batch on the pipeline's thread and the backend's
  threads only normalise and run the network (the code before issue 13; since then, on CPU, each
  worker thread resizes and normalises its own crop, then runs it).
- ``noflush``: ONNX Runtime without flushing denormals in its worker threads (before issue 13).

Each run is its own process; repeats are interleaved and wait for a quiet machine, like
run_benchmark.py. Results are printed (median, min, max) and written to bench/results/variants_*.json.
"""
from __future__ import annotations

import argparse
import shutil
import json
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == BENCH_DIR:
    sys.path.pop(0)
sys.path.insert(0, str(BENCH_DIR.parent))

from bench import run_benchmark as rb  # noqa: E402

E2E_MARKER = "@@VARIANT@@ "


def fused_normalize_batch(pixels, mean=None, std=None):
    """model.preprocess.standardize_batch with the standardisation fused into one multiply-add per
    channel (values differ by up to 5e-7: the folded constants round differently)."""
    import numpy as np

    from model import preprocess as mp

    mean = np.asarray(mp.IMAGENET_MEAN if mean is None else mean, np.float32)
    std = np.asarray(mp.IMAGENET_STD if std is None else std, np.float32)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    bias = (-mean / std).astype(np.float32)
    out = np.empty((len(pixels), 3, pixels.shape[1], pixels.shape[2]), np.float32)
    for channel in range(3):
        np.multiply(pixels[:, :, :, channel], scale[channel], out=out[:, channel], casting="unsafe")
        out[:, channel] += bias[channel]
    return out


class ThreadParallelOrt:
    """ORT sessions with 1 intra-op thread, sub-batches run concurrently on ``workers`` threads."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, inner, workers: int, sub_batch: int):
        from concurrent.futures import ThreadPoolExecutor

        self.inner, self.threads, self.sub_batch = inner, workers, sub_batch
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="ort")

    def __call__(self, batch):
        import numpy as np

        chunks = [batch[i : i + self.sub_batch] for i in range(0, len(batch), self.sub_batch)]
        return np.concatenate(list(self.pool.map(self.inner, chunks)))


def apply(variant: str) -> None:
    """Patch ``model`` in this process for ``variant``."""
    import numpy as np

    import model.engine as me
    import model.runtimes.onnx_runtime as mo
    from model.runtimes.cpu import default_threads

    parts = set(variant.split("_"))
    if "overlap" in parts:
        raise ValueError("overlap: the pipeline's FeatureEngine has no prefetcher; overlap_preprocessing "
                         "is the OsNetEncoder facade's option (its last figures are in bench/README.md)")
    if "fused" in parts:
        me.standardize_batch = fused_normalize_batch
    if "nospin" in parts:
        import onnxruntime as ort

        original = ort.InferenceSession

        def session(graph, sess_options=None, providers=None):
            sess_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return original(graph, sess_options=sess_options, providers=providers)

        ort.InferenceSession = session
    par = [p for p in parts if re.fullmatch(r"par\d+", p)]
    if par:
        sub = int(par[0][3:])
        def parallel_backend(module, plan, threads=None):
            inner = mo.OnnxRuntimeBackend(module, "cpu", threads=1)
            return ThreadParallelOrt(inner, threads or default_threads(), sub)

        me.runtime_for = parallel_backend
    if "inpool" in parts:
        # changes FeatureEngine.encode_crops, which the handler calls only where the runtime
        # preprocesses in its own threads: route every batch there
        from transforms import inference

        def run_inference(self, batch, model, inference_args=None):
            features = model.encode_crops(list(batch))
            return [inference.PredictionResult(crop, vector) for crop, vector in zip(batch, features)]

        inference.OsNetModelHandler.run_inference = run_inference
    if "inpool" in parts:  # with par1: each worker thread resizes its crop, then runs it
        def encode_crops(self, crops):
            crops = list(crops)
            backend = self.runtime
            if not isinstance(backend, ThreadParallelOrt):
                raise ValueError("inpool needs a par1 backend")

            def one(crop):
                return backend.inner(self._network_input_of_one(crop))

            return np.concatenate(list(backend.pool.map(one, crops))) if crops else np.empty((0, 512), np.float32)

        me.FeatureEngine.encode_crops = encode_crops
    if "full" in parts:  # RunInference batches of exactly --batch_size rows (BatchElements min = max)
        from transforms import inference

        def batch_elements_kwargs(self):
            size = self._batch_size or 32
            return {"min_batch_size": size, "max_batch_size": size}  # what the code does since R4

        inference.OsNetModelHandler.batch_elements_kwargs = batch_elements_kwargs
    if "callerresize" in parts:
        from transforms import inference

        def run_inference(self, batch, model, inference_args=None):
            features = model.encode_pixels(inference.resize_batch(batch, channel_order=self._channel_order))
            return [inference.PredictionResult(crop, vector) for crop, vector in zip(batch, features)]

        inference.OsNetModelHandler.run_inference = run_inference
    if "noflush" in parts:
        original_ort = mo.OnnxRuntimeBackend.__init__

        def ort_init(self, *args, **kwargs):
            kwargs["flush_denormals"] = False
            original_ort(self, *args, **kwargs)

        mo.OnnxRuntimeBackend.__init__ = ort_init
    if "null" in parts:
        class Null:
            name, device = "onnxruntime", "cpu"

            def __call__(self, batch):
                return np.zeros((len(batch), 512), np.float32)

        me.runtime_for = lambda *args, **kwargs: Null()


def child_e2e(variant: str, spec: dict) -> None:
    apply(variant)
    result = rb.child_e2e(spec)
    print(E2E_MARKER + json.dumps(result), flush=True)


def openvino_schemes(module, cores: int) -> dict:
    """OpenVINO on the same exported ONNX graph, if installed (``pip install openvino``; not a
    dependency of the project): the LATENCY hint on whole batches, and the THROUGHPUT hint with
    its optimal number of asynchronous single-crop requests (the same idea as the product's ORT
    scheme). Empty without openvino."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    import numpy as np

    from model.export import export_onnx

    core = ov.Core()
    fp32 = {"INFERENCE_PRECISION_HINT": "f32"}  # its default on AVX512-BF16 CPUs is bf16: 1.7x, not the same features
    with tempfile.TemporaryDirectory(prefix="osnet-ov-") as folder:
        path = Path(folder) / "osnet.onnx"
        path.write_bytes(export_onnx(module))
        latency = core.compile_model(core.read_model(str(path)), "CPU", {"PERFORMANCE_HINT": "LATENCY", **fp32})
        single = core.read_model(str(path))
    single.reshape([1, 3, 256, 128])
    throughput = core.compile_model(single, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", **fp32})
    requests = throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(throughput, requests)

    def run_latency(batch):
        return np.asarray(latency(batch)[0], dtype=np.float32)

    def run_throughput(batch):
        out = np.empty((len(batch), 512), np.float32)
        queue.set_callback(lambda request, index: out.__setitem__(index, request.get_output_tensor(0).data[0]))
        for index in range(len(batch)):
            queue.start_async({0: batch[index : index + 1]}, index)
        queue.wait_all()
        return out

    return {"openvino LATENCY hint, whole batch": run_latency,
            f"openvino THROUGHPUT hint, {requests} async requests of 1 crop": run_throughput}


def child_model(spec: dict) -> None:
    """Model only: ORT as the product runs it (single crops on one thread per core) vs other
    sub-batch sizes, and OpenVINO when it is installed. (The intra-op pool the product
    used before R1 is in bench/results/variants_model.json.)"""
    import numpy as np

    from model.runtimes.cpu import default_threads as _default_threads
    from model.runtimes.onnx_runtime import OnnxRuntimeBackend
    from model.checkpoint import load_osnet
    from model.preprocess import preprocess_batch

    crops = rb._load_crops(spec["table"], spec["images"])
    batch = preprocess_batch(crops)
    module = load_osnet(spec["weights"], spec["arch"])
    cores = _default_threads()
    product = OnnxRuntimeBackend(module, "cpu", threads=cores)
    single = OnnxRuntimeBackend(module, "cpu", threads=1)
    schemes = {f"product: {cores} threads x 1 crop, intra-op 1": product}
    for sub in (2, 4):
        schemes[f"{cores} threads x sub-batch {sub}, intra-op 1"] = ThreadParallelOrt(single, cores, sub)
    schemes.update(openvino_schemes(module, cores))
    reference = product(batch[:8])
    result = {"max_abs_diff_vs_product": {}, "img_per_s": {}}
    for name, backend in schemes.items():
        result["max_abs_diff_vs_product"][name] = float(np.abs(backend(batch[:8]) - reference).max())
        result["img_per_s"][name] = {}
        for size in spec["batch_sizes"]:
            backend(batch[:size])
            started = time.perf_counter()
            for start in range(0, len(batch), size):
                backend(batch[start : start + size])
            result["img_per_s"][name][str(size)] = len(batch) / (time.perf_counter() - started)
    print(E2E_MARKER + json.dumps(result), flush=True)


def summarise_e2e(runs: dict[str, list]) -> dict[str, dict]:
    """Steady rows/s per variant over the runs during which the machine was quiet (all if none was)."""
    summary = {}
    for entry, results in runs.items():
        quiet = [r for r in results if r["foreign_cores"] <= rb.NOISY_CORES] or results
        summary[entry] = {**rb.stats([r["steady_rows_per_s"] for r in quiet]),
                          "noisy_runs_left_out": len(results) - len(quiet),
                          "peak_rss_mb": max(r["ru_maxrss_mb"] for r in results)}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("e2e", "model"))
    parser.add_argument("variants", nargs="*", default=["base", "fused", "par1", "fused_par1"],
                        help="e2e variants, each optionally followed by :--pipeline_option=value,...")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1188)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-sizes", default="1,8,16,32")
    parser.add_argument("--arch", default=rb.BENCH_ARCH)
    parser.add_argument("--weights")
    parser.add_argument("--shared")
    parser.add_argument("--quiet-wait", type=float, default=300.0)
    parser.add_argument("--out", default=str(rb.DEFAULT_OUT))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.child[1]).read_text())
        if args.what == "model":
            child_model(spec)
        else:
            child_e2e(args.child[0], spec)
        return 0

    rb.signal.signal(rb.signal.SIGTERM, rb._exit_on_sigterm)  # unwind: child killed, files removed
    work = Path(tempfile.mkdtemp(prefix="osnet-variants-"))
    try:
        return _measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(args: argparse.Namespace, work: Path) -> int:
    shared = rb.find_shared(args.shared)
    seeds, source = rb.seed_rows(shared)
    weights, weights_source = rb.bench_weights(shared, args.arch, args.weights, work)
    table = work / "table.csv"
    rb.write_bench_table(table, max(args.rows, args.images), seeds)
    rb.log(f"{args.what}: {args.arch} ({weights_source}), {source}")
    runs: dict[str, list] = {}
    variants = args.variants if args.what == "e2e" else ["model"]
    for repeat in range(args.repeats):
        for entry in variants:
            variant, _, options = entry.partition(":")
            spec = {"table": str(table), "weights": weights, "arch": args.arch, "rows": args.rows,
                    "output": str(work / f"out_{repeat}"), "pipeline_args": [o for o in options.split(",") if o],
                    "images": args.images, "batch_sizes": [int(v) for v in args.batch_sizes.split(",")]}
            spec_path = work / "spec.json"
            spec_path.write_text(json.dumps(spec))
            quiet = rb.wait_for_quiet(args.quiet_wait)
            label = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{entry}_{repeat}")
            measured = rb.run_measured([sys.executable, str(Path(__file__).resolve()), args.what, "--child", variant,
                                        str(spec_path)], label, work)
            line = next(l for l in measured["stdout"].splitlines() if l.startswith(E2E_MARKER))
            result = json.loads(line[len(E2E_MARKER):])
            result.update(foreign_cores=round(measured["foreign_cores"], 3), **quiet)
            runs.setdefault(entry, []).append(result)
            if args.what == "e2e":
                rb.log(f"  {entry}: {result['steady_rows_per_s']:.1f} rows/s steady "
                       f"(foreign load {measured['foreign_cores']:.2f} cores)")
            shutil.rmtree(work / f"out_{repeat}", ignore_errors=True)
    summary = {}
    if args.what == "e2e":
        summary = summarise_e2e(runs)
        for entry, s in summary.items():
            left_out = f", {s['noisy_runs_left_out']} noisy run(s) left out" if s["noisy_runs_left_out"] else ""
            print(f"{entry:45s} {s['median']:7.1f} rows/s  ({s['min']:.1f}-{s['max']:.1f}){left_out}")
    else:
        results = runs["model"]
        for scheme in results[0]["img_per_s"]:
            summary[scheme] = {size: rb.stats([r["img_per_s"][scheme][size] for r in results])
                               for size in results[0]["img_per_s"][scheme]}
            cells = "  ".join(f"bs {size}: {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"
                              for size, s in summary[scheme].items())
            print(f"{scheme:42s} {cells}   max |diff| {results[0]['max_abs_diff_vs_product'][scheme]:.1e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv), "arch": args.arch,
              "weights": weights_source, "crops": source, "machine": rb.machine_info(), "summary": summary, "runs": runs}
    (out / f"variants_{args.what}.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
