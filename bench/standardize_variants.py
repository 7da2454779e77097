"""Per-crop CPU cost of the preprocessing steps, and of bit-identical ways to standardise.

    python bench/standardize_variants.py [--repeats 7] [--json bench/results/standardize_variants.json]

On the 198 shared crops (``../shared``, or ``--shared``), in one process, one thread, the variants
interleaved repeat by repeat: the decode (:func:`transforms.crop_codec.decode_crop`), Pillow's
resize (:func:`model.preprocess.resize_batch`) and the product's
:func:`model.preprocess.standardize_batch` beside other ways of computing the same float32 values
from the resized uint8 pixels. Every variant is checked to give exactly the product's values
before it is timed. Reports the median ms per crop and each variant's ratio to
``standardize_batch`` (median of the per-repeat ratios).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a script
    import _as_package  # noqa: F401

import numpy as np  # noqa: E402

from bench.machine import find_shared, machine_info  # noqa: E402
from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, resize_batch, standardize_batch  # noqa: E402
from testkit.reference import read_seed_rows  # noqa: E402
from transforms.crop_codec import decode_crop  # noqa: E402

_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_STD = np.asarray(IMAGENET_STD, np.float32)
_LUT = (np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0) - _MEAN[:, None]) / _STD[:, None]


def contiguous_first(pixels: np.ndarray) -> np.ndarray:
    """An NCHW uint8 copy first, then the three operations in place on the whole batch."""
    out = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).astype(np.float32)
    out /= np.float32(255.0)
    out -= _MEAN[None, :, None, None]
    out /= _STD[None, :, None, None]
    return out


def lookup_per_channel(pixels: np.ndarray) -> np.ndarray:
    """The 256 possible values of each channel computed once, gathered per plane."""
    out = np.empty((len(pixels), 3) + pixels.shape[1:3], np.float32)
    for channel in range(3):
        np.take(_LUT[channel], pixels[:, :, :, channel], out=out[:, channel])
    return out


def onnx_runtime_graph():
    """The same four operations (transpose, cast, /255, -mean, /std) as a one-thread ORT session, one crop a call."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["f", "k255"], ["a"]),
             helper.make_node("Sub", ["a", "mean"], ["b"]),
             helper.make_node("Div", ["b", "std"], ["y"])]
    constants = [numpy_helper.from_array(np.array(255.0, np.float32), "k255"),
                 numpy_helper.from_array(_MEAN.reshape(1, 3, 1, 1), "mean"),
                 numpy_helper.from_array(_STD.reshape(1, 3, 1, 1), "std")]
    graph = helper.make_graph(nodes, "standardize", [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, None, None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, None, None])], constants)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                   options, providers=["CPUExecutionProvider"])
    return lambda pixels: np.concatenate([session.run(None, {"x": pixels[i:i + 1]})[0] for i in range(len(pixels))])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shared")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    shared = find_shared(args.shared)
    if shared is None:
        parser.error("needs ../shared (or --shared): the real crops")
    cells = [row["feature_vector"] for row in read_seed_rows(shared / "data" / "seed_format" / "real_crops.csv")]
    crops = [decode_crop(cell) for cell in cells]
    pixels = resize_batch(crops)
    reference = standardize_batch(pixels)
    standardizers = {"standardize_batch": standardize_batch, "contiguous_first": contiguous_first,
                     "lookup_per_channel": lookup_per_channel, "onnx_runtime_one_crop": onnx_runtime_graph()}
    for name, standardize in standardizers.items():
        if not np.array_equal(standardize(pixels), reference):
            raise SystemExit(f"{name} does not give standardize_batch's values")
    steps = {"decode_crop": lambda: [decode_crop(cell) for cell in cells], "resize_batch": lambda: resize_batch(crops),
             **{name: (lambda f=f: f(pixels)) for name, f in standardizers.items()}}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(args.repeats):
        for name in (list(steps) if repeat % 2 == 0 else list(reversed(steps))):
            started = time.perf_counter()
            steps[name]()
            times[name].append((time.perf_counter() - started) / len(crops) * 1e3)
    base = times["standardize_batch"]
    result = {"machine": machine_info(), "crops": len(crops), "repeats": args.repeats, "ms_per_crop": {
        name: {"median": statistics.median(values),
               "vs_standardize_batch": statistics.median(v / b for v, b in zip(values, base))}
        for name, values in times.items()}}
    for name, r in result["ms_per_crop"].items():
        print(f"{name:24s} {r['median']:.3f} ms/crop  x{r['vs_standardize_batch']:.2f} of standardize_batch")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
