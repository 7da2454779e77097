"""A checkpoint's ONNX graph, exported once per machine in a child process and cached on disk.

Exporting needs torch (about 180 MB of memory and 2-3 s to import it, about 100 MB more for the
exporter); running the graph with ONNX Runtime does not. So a process that only runs the graph (an
SDK worker on CPU) asks for it here: a cached copy, or a child process (``python -m
model.graph_cache``) that loads the checkpoint (every key and shape checked), exports it, checks
ONNX Runtime's features against torch's on a probe (:func:`model.export.check_export`) and only
then writes it. The asking process never imports torch, and the export's memory leaves with the
child.

An entry is named by what decides the graph: the weights' sha256, the architecture asked for,
torch's version and :data:`GRAPH_FORMAT`. The graph is written under a temporary name and renamed,
and its sidecar JSON (architecture, the graph's sha256) is written last, so an entry is whole or
absent; the graph's sha256 is checked on every read. A lock file keeps the processes of one machine
from exporting the same entry at once.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from model.contract import CheckpointError

__all__ = ["GRAPH_FORMAT", "ExportedGraph", "GraphExportError", "exported_graph", "graph_key"]

#: Raise when :func:`model.export.export_onnx` changes what it writes: older entries then miss.
GRAPH_FORMAT = 1
#: Seconds a child export may take (x1.0: a few seconds; a cold machine's imports included).
EXPORT_TIMEOUT_S = 600
_STDERR_TAIL = 2000
#: The child's exit status for weights that cannot be used, and the prefix of the stderr line
#: that holds the message (JSON), whatever else was printed before it.
_BAD_CHECKPOINT = 3
_MESSAGE_PREFIX = "osnet-beam checkpoint error: "


class GraphExportError(RuntimeError):
    """The child process could not load, export or check the checkpoint (its message says why)."""


@dataclass(frozen=True)
class ExportedGraph:
    """A cached, checked export: the graph file, the architecture it was built as, its sha256,
    and the sha256 of the weights it was exported from."""

    path: str
    arch: str
    sha256: str
    weights_sha256: str = ""

    def read(self) -> bytes:
        """The graph's bytes, refused (GraphExportError) if they are not what was written."""
        with open(self.path, "rb") as stream:
            graph = stream.read()
        if hashlib.sha256(graph).hexdigest() != self.sha256:
            raise GraphExportError(f"{self.path} does not hold the graph its entry names (sha256 differs); delete it")
        return graph


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_version() -> str:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def graph_key(weights: str, arch: Optional[str]) -> str:
    """The cache entry's name for ``weights`` (a local file) exported as ``arch`` (None: inferred)."""
    return _key(_file_sha256(weights), arch)


def _key(weights_sha256: str, arch: Optional[str]) -> str:
    identity = json.dumps([weights_sha256, arch or "", _torch_version(), GRAPH_FORMAT])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _paths(cache_dir: str, key: str) -> tuple[str, str, str]:
    base = os.path.join(cache_dir, f"graph-{key}")
    return f"{base}.onnx", f"{base}.json", f"{base}.lock"


def _cached(graph_path: str, info_path: str, weights_sha256: str) -> Optional[ExportedGraph]:
    try:
        with open(info_path) as stream:
            info = json.load(stream)
    except (OSError, ValueError):
        return None
    if not os.path.isfile(graph_path):
        return None
    return ExportedGraph(graph_path, info["arch"], info["sha256"], weights_sha256)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (POSIX); no lock where there is no fcntl."""
    try:
        import fcntl
    except ImportError:  # Windows: two exports at once only cost time (the renames are atomic)
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _child_env() -> dict[str, str]:
    """This process's environment, with the directory holding the ``model`` package first on the
    child's path (it may have come from sys.path, not from an installed package)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def exported_graph(weights: str, arch: Optional[str], cache_dir: str, *, timeout_s: float = EXPORT_TIMEOUT_S) -> ExportedGraph:
    """The checked ONNX graph of ``weights`` (a local file) as ``arch``: from ``cache_dir``, or
    exported there first by a child process.

    With ``arch`` None (inferred from the weights' keys) the entry is also made the one of the
    architecture inferred, which is what the workers ask for once the launcher has named it.

    Raises:
        model.contract.CheckpointError: the weights cannot be used (the message
            :func:`model.checkpoint.load_osnet` gives).
        GraphExportError: the child failed otherwise (an export that does not match torch, no
            torch installed); its last lines of output are in the message.
    """
    os.makedirs(cache_dir, exist_ok=True)
    digest = _file_sha256(weights)  # read once: the key of both entries, and the caller's hash
    found = _export_entry(weights, digest, arch, cache_dir, timeout_s)
    if arch is None:
        entry = _paths(cache_dir, _key(digest, None))
        named = _paths(cache_dir, _key(digest, found.arch))
        with _locked(named[2]):
            if _cached(named[0], named[1], digest) is None:
                for source, target in zip(entry[:2], named[:2]):  # the sidecar last, as an export writes them
                    partial = f"{target}.{os.getpid()}.partial"
                    shutil.copyfile(source, partial)
                    os.replace(partial, target)
    return found


def _export_entry(weights: str, digest: str, arch: Optional[str], cache_dir: str, timeout_s: float) -> ExportedGraph:
    graph_path, info_path, lock_path = _paths(cache_dir, _key(digest, arch))
    found = _cached(graph_path, info_path, digest)
    if found is not None:
        return found
    with _locked(lock_path):
        found = _cached(graph_path, info_path, digest)  # another process may have made it meanwhile
        if found is not None:
            return found
        suffix = f".{os.getpid()}.partial"
        command = [sys.executable, "-m", "model.graph_cache", "--weights", weights, "--graph", graph_path + suffix,
                   "--info", info_path + suffix]
        if arch:
            command += ["--arch", arch]
        try:
            done = subprocess.run(command, env=_child_env(), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise GraphExportError(f"exporting {weights} to ONNX took over {timeout_s:.0f} s") from None
        if done.returncode != 0:
            for partial in (graph_path + suffix, info_path + suffix):
                with contextlib.suppress(OSError):
                    os.remove(partial)
            if done.returncode == _BAD_CHECKPOINT:
                for line in reversed(done.stderr.splitlines()):
                    if line.startswith(_MESSAGE_PREFIX):
                        raise CheckpointError(json.loads(line[len(_MESSAGE_PREFIX):]))
            tail = (done.stderr or done.stdout).strip()[-_STDERR_TAIL:]
            raise GraphExportError(f"could not export {weights} to ONNX (exit {done.returncode}): {tail}")
        os.replace(graph_path + suffix, graph_path)
        os.replace(info_path + suffix, info_path)  # last: the entry is whole from here on
    found = _cached(graph_path, info_path, digest)
    if found is None:
        raise GraphExportError(f"the export of {weights} left no entry in {cache_dir}")
    return found


def _export(weights: str, arch: Optional[str], graph_path: str, info_path: str) -> None:
    """The child's work: load, export, check against torch, write the graph and its sidecar."""
    from model.checkpoint import load_osnet
    from model.export import check_export, export_onnx
    from model.runtimes.onnx_runtime import OnnxRuntimeBackend

    module = load_osnet(weights, arch=arch)
    graph = export_onnx(module)
    check_export(OnnxRuntimeBackend.from_graph(graph, "cpu", 1), module)
    with open(graph_path, "wb") as stream:
        stream.write(graph)
    info = {"arch": module.arch, "sha256": hashlib.sha256(graph).hexdigest(), "weights_sha256": _file_sha256(weights),
            "torch": _torch_version(), "format": GRAPH_FORMAT}
    with open(info_path, "w") as stream:
        json.dump(info, stream)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="export a checkpoint to a checked ONNX graph (the cache's child)")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--arch", default=None)
    parser.add_argument("--graph", required=True, help="where the graph is written")
    parser.add_argument("--info", required=True, help="where its JSON sidecar is written")
    args = parser.parse_args(argv)
    try:
        _export(args.weights, args.arch, args.graph, args.info)
    except CheckpointError as error:
        print(_MESSAGE_PREFIX + json.dumps(str(error)), file=sys.stderr)
        return _BAD_CHECKPOINT
    except Exception as error:  # noqa: BLE001 (the parent reports it)
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
