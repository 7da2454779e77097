#!/usr/bin/env python
"""CPU switches of issue 13, per checkpoint of ../shared, in one process: fidelity and speed ratios.

    python bench/cpu_precision.py                       # every shared checkpoint, 5 interleaved repeats
    python bench/cpu_precision.py --stems osnet_x0_25_msmt17 --repeats 3

For each checkpoint, on the 198 real crops of ../shared/data/real_crops:

- fidelity: ONNX Runtime fp32 with denormals flushed (the default) against torchreid's reference
  features; CPU bf16 (OpenVINO, on AVX512-BF16/AMX cores) against fp32: min / median cosine, and
  the cross-camera rank-1 / mAP of each (testkit/reference.py's definitions);
- speed, model only, batch 32, the variants interleaved batch by batch in this one process
  (ratios within one run hold on a busy machine; rates do not): ORT fp32 as before issue 13
  (``flush_denormals=False``), ORT fp32 flushed, ORT fp32 flushed on weights whose denormals were
  zeroed at load (the "also flush the weights" question), and OpenVINO bf16.

Results: printed, and written to ``--out``/cpu_precision.{json,md} (default bench/results; with
the default, the tables in bench/README.md and README.md are updated too).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a script
    import _as_package  # noqa: F401

BENCH_DIR = Path(__file__).resolve().parent

from bench.harness import log  # noqa: E402
from bench.machine import DEFAULT_OUT, find_shared, machine_info  # noqa: E402
from bench.rates import stats  # noqa: E402
from bench.report import update_readme  # noqa: E402
from testkit.reference import CHECKPOINTS, checkpoint_path  # noqa: E402

STEMS = list(CHECKPOINTS)
BATCH = 32


def zero_denormal_weights(module):
    """A copy of ``module`` with every denormal float32 weight and buffer set to zero, and their count."""
    import torch

    module = copy.deepcopy(module)
    count = 0
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.dtype == torch.float32:
                denormal = (tensor != 0) & (tensor.abs() < torch.finfo(torch.float32).tiny)
                count += int(denormal.sum())
                tensor[denormal] = 0
    return module, count


def measure(stem: str, shared: Path, repeats: int) -> dict:
    import numpy as np

    from model.policy import cpu_supports_bf16
    from model.runtimes import create_backend
    from model.runtimes.onnx_runtime import OnnxRuntimeBackend
    from model.checkpoint import load_osnet
    from model.preprocess import preprocess_batch
    from testkit.reference import cross_camera_retrieval, load_reference, read_labels, row_cosine

    crops_dir = shared / "data" / "real_crops"
    files, crops, reference = load_reference(shared / "data" / "reference", crops_dir, stem)
    labels = read_labels(crops_dir)
    batch = preprocess_batch(crops)
    module = load_osnet(checkpoint_path(shared, stem))
    zeroed, denormals = zero_denormal_weights(module)
    variants = {
        "ort_fp32_noflush": OnnxRuntimeBackend(module, "cpu", flush_denormals=False),
        "ort_fp32_flush": OnnxRuntimeBackend(module, "cpu"),
        "ort_fp32_flush_zeroed_weights": OnnxRuntimeBackend(zeroed, "cpu"),
    }
    if cpu_supports_bf16():
        variants["openvino_bf16"] = create_backend(module, device="cpu", precision="bf16")
    features = {name: backend(batch) for name, backend in variants.items()}
    fp32 = features["ort_fp32_flush"]

    def retrieval(values):
        rank1, mean_ap = cross_camera_retrieval(values, files, labels)
        return {"rank1": rank1, "mAP": mean_ap}

    fidelity = {"denormal_weights": denormals, "reference": retrieval(reference)}
    for name, values in features.items():
        versus = reference if name.startswith("ort") else fp32
        cosine = row_cosine(values, versus)
        fidelity[name] = {"vs": "torchreid reference" if name.startswith("ort") else "ort_fp32_flush",
                          "min_cosine": float(cosine.min()), "median_cosine": float(np.median(cosine)),
                          **retrieval(values)}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        names = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for start in range(0, len(batch) - BATCH + 1, BATCH):
            for name in names:
                started = time.perf_counter()
                variants[name](batch[start : start + BATCH])
                rates[name].append(BATCH / (time.perf_counter() - started))
    base = rates["ort_fp32_noflush"]
    flush = rates["ort_fp32_flush"]
    speed = {name: {"img_per_s": stats(values),
                    "vs_ort_fp32_noflush": statistics.median(a / b for a, b in zip(values, base)),
                    "vs_ort_fp32_flush": statistics.median(a / b for a, b in zip(values, flush))}
             for name, values in rates.items()}
    return {"fidelity": fidelity, "speed_batch_32": speed}


def markdown(record: dict) -> tuple[str, str]:
    """(bench/README.md's full table, README.md's bf16 rows) from a record."""
    full = [f"Measured {record['date']}, {record['machine'].get('cpu_model', '?')}, "
            f"{record['machine'].get('cores_available')} cores, load average {record['loadavg_start'][0]:.1f} at the "
            f"start and {record['loadavg_end'][0]:.1f} at the end; medians of per-batch ratios.", "",
            "| checkpoint (denormal weights) | variant | vs ORT fp32 no flush | vs ORT fp32 flushed | "
            "min / median cosine | rank-1 (reference) |", "|---|---|---|---|---|---|"]
    short = []
    for stem, result in record["results"].items():
        f, s = result["fidelity"], result["speed_batch_32"]
        for name in s:
            full.append(f"| {stem} ({f['denormal_weights']}) | {name} | {s[name]['vs_ort_fp32_noflush']:.2f}x | "
                        f"{s[name]['vs_ort_fp32_flush']:.2f}x | {f[name]['min_cosine']:.5f} / {f[name]['median_cosine']:.5f} "
                        f"(vs {f[name]['vs']}) | {f[name]['rank1']:.3f} ({f['reference']['rank1']:.3f}) |")
        if "openvino_bf16" in s:
            short.append(f"| {stem} | {s['openvino_bf16']['vs_ort_fp32_flush']:.2f}x | "
                         f"{f['openvino_bf16']['min_cosine']:.4f} / {f['openvino_bf16']['median_cosine']:.4f} | "
                         f"{f['ort_fp32_flush']['rank1']:.3f} -> {f['openvino_bf16']['rank1']:.3f} |")
    return "\n".join(full) + "\n", "\n".join(short) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stems", default=",".join(STEMS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shared")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    shared = find_shared(args.shared)
    if shared is None:
        parser.error("needs ../shared (or --shared): the real crops and the checkpoints")
    load_start = os.getloadavg()
    results = {}
    for stem in [s for s in args.stems.split(",") if s]:
        log(f"{stem} ...")
        results[stem] = measure(stem, shared, args.repeats)
        f, s = results[stem]["fidelity"], results[stem]["speed_batch_32"]
        for name in s:
            print(f"{stem:34s} {name:30s} {s[name]['img_per_s']['median']:7.1f} img/s  "
                  f"x{s[name]['vs_ort_fp32_noflush']:.2f} vs noflush  x{s[name]['vs_ort_fp32_flush']:.2f} vs flush  "
                  f"min cos {f[name]['min_cosine']:.5f} (vs {f[name]['vs']})  rank-1 {f[name]['rank1']:.3f}")
        print(f"{stem:34s} reference rank-1 {f['reference']['rank1']:.3f}; denormal weights {f['denormal_weights']}")
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv),
              "machine": machine_info(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
              "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_precision.json").write_text(json.dumps(record, indent=1))
    full, short = markdown(record)
    (out / "cpu_precision.md").write_text(full)
    print(full)
    if out.resolve() == DEFAULT_OUT.resolve():
        update_readme(full, "<!-- cpu-precision:begin -->", "<!-- cpu-precision:end -->")
        readme = BENCH_DIR.parent / "README.md"
        text = readme.read_text()
        begin, end = "<!-- cpu-bf16:begin -->", "<!-- cpu-bf16:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            readme.write_text(f"{head}{begin}\n{short}{end}{rest.split(end, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
