"""The ONNX graph exported once per machine by a child process (model/graph_cache.py), and the
processes that run it without importing torch (SDK workers, the launcher)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from model import graph_cache
from model.contract import CheckpointError
from model.graph_cache import ExportedGraph, GraphExportError, exported_graph, graph_key

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = REPO_ROOT / "weights" / "osnet_x0_25_msmt17.pth"


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, from the repository root, as a worker would run it."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, **kwargs)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("graph-cache")


@pytest.fixture(scope="module")
def bundled_graph(cache) -> ExportedGraph:
    return exported_graph(str(BUNDLED), None, str(cache))


def _no_child(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a child process was started: {args}")

    monkeypatch.setattr(graph_cache.subprocess, "run", refuse)


def test_the_graph_computes_what_a_graph_exported_in_process_computes(bundled_graph):
    from model.checkpoint import load_osnet
    from model.runtimes.onnx_runtime import OnnxRuntimeBackend

    assert bundled_graph.arch == "osnet_x0_25"
    probe = np.random.default_rng(0).standard_normal((4, 3, 256, 128)).astype(np.float32)
    from_graph = OnnxRuntimeBackend.from_graph(bundled_graph.read(), "cpu", 1)(probe)
    in_process = OnnxRuntimeBackend(load_osnet(BUNDLED), "cpu", 1)(probe)
    np.testing.assert_array_equal(from_graph, in_process)  # the same export, the same runtime


def test_a_second_ask_reads_the_entry_and_the_inferred_arch_is_an_entry_too(bundled_graph, cache, monkeypatch):
    _no_child(monkeypatch)
    again = exported_graph(str(BUNDLED), None, str(cache))
    named = exported_graph(str(BUNDLED), "osnet_x0_25", str(cache))  # what the workers ask for
    assert again == bundled_graph
    assert bundled_graph.weights_sha256 == hashlib.sha256(BUNDLED.read_bytes()).hexdigest()
    assert named.arch == "osnet_x0_25" and named.read() == bundled_graph.read()
    info = json.loads(Path(bundled_graph.path).with_suffix(".json").read_text())
    assert info["arch"] == "osnet_x0_25" and info["format"] == graph_cache.GRAPH_FORMAT
    assert not list(cache.glob("*.partial"))


def test_the_key_follows_the_weights_bytes_and_the_arch(tmp_path):
    copy = tmp_path / "copy.pth"
    copy.write_bytes(BUNDLED.read_bytes())
    assert graph_key(str(copy), None) == graph_key(str(BUNDLED), None)
    assert graph_key(str(BUNDLED), None) != graph_key(str(BUNDLED), "osnet_x0_25")
    copy.write_bytes(BUNDLED.read_bytes() + b"\0")
    assert graph_key(str(copy), None) != graph_key(str(BUNDLED), None)


def test_a_graph_changed_on_disk_is_refused(bundled_graph, tmp_path):
    changed = tmp_path / "changed.onnx"
    changed.write_bytes(b"x" + Path(bundled_graph.path).read_bytes()[1:])
    with pytest.raises(GraphExportError, match="sha256 differs"):
        ExportedGraph(str(changed), bundled_graph.arch, bundled_graph.sha256).read()


def test_unusable_weights_give_the_checkpoint_message_and_leave_no_entry(tmp_path):
    from model.checkpoint import load_osnet

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as in_process:
        load_osnet(bad)
    with pytest.raises(CheckpointError) as through_child:
        exported_graph(str(bad), None, str(tmp_path / "cache"))
    assert str(through_child.value) == str(in_process.value)
    with pytest.raises(CheckpointError, match="osnet_x1_0"):  # a layout that is not the arch asked for
        exported_graph(str(BUNDLED), "osnet_x1_0", str(tmp_path / "cache"))
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".lock", ".lock"]


def test_processes_asking_at_once_get_one_whole_entry(tmp_path):
    cache = tmp_path / "cache"
    code = ("import sys; from model.graph_cache import exported_graph; "
            f"g = exported_graph({str(BUNDLED)!r}, 'osnet_x0_25', {str(cache)!r}); print(g.sha256)")
    children = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate(timeout=300) for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    assert outputs[0][0] == outputs[1][0]
    assert sorted(p.name.split(".", 1)[1] for p in cache.iterdir()) == ["json", "lock", "onnx"]


def test_threads_asking_at_once_get_the_same_entry(tmp_path):
    cache, found, failed = tmp_path / "cache", [], []

    def ask():
        try:
            found.append(exported_graph(str(BUNDLED), "osnet_x0_25", str(cache)))
        except BaseException as error:  # noqa: BLE001 (reported below)
            failed.append(error)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed and len(found) == 2 and found[0] == found[1]


def test_a_worker_builds_its_engine_and_encodes_without_importing_torch(bundled_graph):
    """What an SDK worker does on CPU: Beam's RunInference, our handler, the model loaded from the
    cached graph, crops encoded, all in a fresh interpreter that never imports torch."""
    code = f"""
import sys, json
import numpy as np
import transforms.inference as inference
inference._CACHE_DIR = {str(Path(bundled_graph.path).parent)!r}
handler = inference.OsNetModelHandler({str(BUNDLED)!r}, arch="osnet_x0_25")
engine = handler.load_model()
crops = [np.random.default_rng(i).integers(0, 256, (120 + i, 50, 3), dtype=np.uint8) for i in range(3)]
features = [r.inference.features() for r in handler.run_inference(crops, engine)]
np.save(sys.argv[1], np.stack(features))
print(json.dumps({{"torch": "torch" in sys.modules, "backend": engine.plan.backend}}))
"""
    out = Path(bundled_graph.path).parent / "worker-features.npy"
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"torch": False, "backend": "onnxruntime"}

    from model import load_osnet
    from model.engine import FeatureEngine
    from model.policy import plan_here

    crops = [np.random.default_rng(i).integers(0, 256, (120 + i, 50, 3), dtype=np.uint8) for i in range(3)]
    reference = FeatureEngine(load_osnet(BUNDLED), plan_here("onnxruntime", "cpu")).encode_crops(crops)
    np.testing.assert_array_equal(np.load(out), reference)


def test_the_launchers_modules_and_the_model_facts_import_no_torch():
    done = _python(
        "import sys\n"
        "import pipeline.cli, pipeline.run, pipeline.build, pipeline.validate, transforms.inference\n"
        "from model import FEATURE_DIM, CheckpointError, RuntimePlan, plan_runtime\n"
        "from model.policy import local_gpu\n"
        "gpu = local_gpu('auto')\n"
        "print('torch' in sys.modules, FEATURE_DIM, gpu)\n"
        "from model import OsNetEncoder\n"  # the seed API still imports (and brings torch)
        "print('torch' in sys.modules)\n"
    )
    assert done.returncode == 0, done.stderr
    if any(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("this machine has an NVIDIA device: local_gpu asks torch, as it must")
    assert done.stdout.split() == ["False", "512", "None", "True"]


def test_denormals_are_flushed_in_the_calling_thread_only_without_torch():
    done = _python(
        "import sys, threading\n"
        "from model.runtimes.cpu import flush_denormals_in_this_thread, thread_flushes_denormals\n"
        "seen = []\n"
        "def work():\n"
        "    seen.append(thread_flushes_denormals())\n"
        "    flush_denormals_in_this_thread()\n"
        "    seen.append(thread_flushes_denormals())\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
        "print(seen, thread_flushes_denormals(), 'torch' in sys.modules)\n"
    )
    assert done.returncode == 0, done.stderr
    on_x86_linux = sys.platform == "linux" and os.uname().machine in ("x86_64", "AMD64")
    assert done.stdout.strip() == f"[False, True] False {not on_x86_linux}"


def test_runinference_is_imported_without_torch_and_the_model_manager_stays_importable():
    done = _python(
        "import sys, importlib.util\n"
        "import transforms.beam_ml\n"
        "import apache_beam.ml.inference.base as base\n"
        "print('torch' in sys.modules, base.ModelManager, 'apache_beam.ml.inference.model_manager' in sys.modules)\n"
        "print(importlib.util.find_spec('apache_beam.ml.inference.model_manager') is not None)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "None", "False", "True"]


def test_two_sdk_processes_encode_without_torch_from_the_cli(seed_table, tmp_path):
    """As a user runs it: the launcher exports the graph once (a child process), each SDK worker
    process loads it and says it has not loaded torch; every row is encoded."""
    import csv

    with open(seed_table, newline="") as stream:
        rows = list(csv.reader(stream))
    header, body = rows[0], rows[1:21]
    for part in (0, 1):
        with open(tmp_path / f"part-{part}.csv", "w", newline="") as stream:
            csv.writer(stream).writerows([header, *body[part::2]])
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", str(tmp_path / "part-*.csv"), "--output", str(tmp_path / "out"),
         "--direct_num_workers=2", "--direct_running_mode=multi_processing", "--log_level", "info", "--progress", "off"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loads = re.findall(r"loaded OSNet osnet_x0_25 from [^\"]*?; (torch (?:not )?loaded) in this process", done.stderr)
    assert loads and set(loads) == {"torch not loaded"}, loads
    assert "encoded=20 errors=0" in done.stdout, done.stdout

    # read back with README's recipe: every row once, the features the module path computes
    from model import load_osnet
    from model.engine import FeatureEngine
    from model.policy import plan_here
    from pipeline import read_features
    from pipeline.outputs import read_manifest
    from transforms.crop_codec import decode_crop

    table = read_features(str(tmp_path / "out")).to_pylist()
    image = header.index("feature_vector")
    by_file = {row[header.index("file")]: row for row in body}
    assert sorted(r["file"] for r in table) == sorted(by_file)
    engine = FeatureEngine(load_osnet(BUNDLED), plan_here("onnxruntime", "cpu"))
    expected = engine.encode_crops([decode_crop(by_file[r["file"]][image]) for r in table])
    np.testing.assert_array_equal(np.asarray([r["feature_vector"] for r in table], np.float32), expected)
    for row in table:  # pass-through cells as read
        assert str(row["frame"]) == by_file[row["file"]][header.index("frame")]
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["model"]["weights_sha256"] == hashlib.sha256(BUNDLED.read_bytes()).hexdigest()
    assert manifest["model"]["arch"] == "osnet_x0_25"


def test_unusable_or_unsafe_weights_are_refused_by_the_cli_before_the_job(seed_table, tmp_path):
    """As a user runs it: the child process checks the weights; the launcher exits 2 with the
    checkpoint's own message, writes no output, and an unsafe pickle is never run."""
    import pickle

    import torch

    marker = tmp_path / "marker"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": Exploit()}, tmp_path / "evil.pth", pickle_protocol=pickle.DEFAULT_PROTOCOL)
    (tmp_path / "truncated.pth").write_bytes(BUNDLED.read_bytes()[:5000])
    for name in ("evil.pth", "truncated.pth"):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "--input", str(seed_table), "--output", str(tmp_path / "out"),
             "--weights", str(tmp_path / name)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)},
        )
        assert done.returncode == 2, (name, done.stderr[-2000:])
        assert done.stderr.startswith("osnet-beam: error:") and name in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        with pytest.raises(CheckpointError) as in_process:
            from model.checkpoint import load_osnet

            load_osnet(tmp_path / name)
        assert str(in_process.value) in done.stderr, (str(in_process.value), done.stderr)
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert not list((tmp_path / "osnet-beam-weights").glob("*.onnx"))


def test_the_lazy_model_names_are_exactly_the_public_ones():
    import model

    assert sorted(model.__all__) == sorted(model._EXPORTS)
    for name in model.__all__:
        assert getattr(model, name) is getattr(__import__(model._EXPORTS[name], fromlist=[name]), name)


def test_without_a_writable_cache_the_worker_exports_in_process(tmp_path, monkeypatch, caplog):
    import logging

    import transforms.inference as inference

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(inference, "_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(inference, "_ENGINES", {})
    caplog.set_level(logging.WARNING, logger="transforms.inference")
    handler = inference.OsNetModelHandler(str(BUNDLED), arch="osnet_x0_25", backend="onnxruntime", device="cpu")
    engine = handler.load_model()
    crops = [np.random.default_rng(1).integers(0, 256, (90, 40, 3), dtype=np.uint8)]
    assert engine.plan.backend == "onnxruntime" and engine.encode_crops(crops).shape == (1, 512)
    assert any("cannot cache the ONNX graph" in r.getMessage() for r in caplog.records), caplog.text
