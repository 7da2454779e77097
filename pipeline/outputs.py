"""One run's outputs: names, the lock, the manifest, and reading exactly that run back.

Layout of an output directory (local or any Beam filesystem)::

    features-RUN-SSSSS-of-NNNNN.parquet|csv   this run's feature shards (RUN = the run id)
    errors-RUN-SSSSS-of-NNNNN.jsonl           this run's error shards
    _SUCCESS.json                             the manifest of the last run that finished
    _LOCK.json                                while a run is writing (who, where, since when)

A run's shards carry its id, so two runs' files never collide; the manifest is written last
(atomically) and names every shard of its run with its row count, so a reader that goes through
the manifest (:func:`read_features`) sees exactly one run even while an ``--overwrite`` rerun is
writing beside it or after one was killed. The previous run's files are deleted only after the
new manifest is in place.
"""
from __future__ import annotations

import base64
import csv
import datetime
import io
import json
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import widening
from transforms import metrics
from transforms.write import ERRORS_PREFIX, FEATURES_PREFIX, HELD_PREFIX, shard_prefix

MANIFEST_NAME = "_SUCCESS.json"
LOCK_NAME = "_LOCK.json"
TEMP_PREFIX = "beam-temp-"
MANIFEST_FORMAT = "osnet-beam run manifest"
MANIFEST_VERSION = 1
#: The manifest's counts beside the rows read and encoded (named by :mod:`transforms.metrics`).
ERRORS, ERRORS_BY_REASON = "errors", "errors_by_reason"

csv.field_size_limit(sys.maxsize)


class OutputError(ValueError):
    """The output directory cannot take this run (exit status 2): named, with what is there."""


def new_run_id() -> str:
    """A run id: UTC start time (sortable) and a random suffix, e.g. ``20261201T200512Z-3f9a1c``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def is_local(path: str) -> bool:
    return "://" not in path


def _is_ours(name: str) -> bool:
    """A top-level name in an output directory that some osnet-beam run wrote."""
    return (
        name.startswith((f"{FEATURES_PREFIX}-", f"{ERRORS_PREFIX}-", TEMP_PREFIX))
        or name in (MANIFEST_NAME, LOCK_NAME)
        or name.startswith(f"{MANIFEST_NAME}.tmp")
    )


def _belongs_to(name: str, run_id: str) -> bool:
    return (
        name.startswith((f"{FEATURES_PREFIX}-{run_id}-", f"{ERRORS_PREFIX}-{run_id}-"))
        or (name.startswith(TEMP_PREFIX) and f"-{run_id}-" in name)
    )


# ---------------------------------------------------------------------------------------------
# listing, reading, writing and deleting through Beam's filesystems (local: the os module)


def list_entries(output_dir: str) -> dict[str, list[str]]:
    """Top-level names in ``output_dir`` -> the full paths of the files under each (empty if absent)."""
    if is_local(output_dir):
        if not os.path.isdir(output_dir):
            return {}
        return {name: [os.path.join(output_dir, name)] for name in os.listdir(output_dir)}
    pattern = FileSystems.join(output_dir, "**")
    try:
        results = FileSystems.match([pattern])
    except Exception:  # noqa: BLE001 (Beam raises BeamIOError when nothing matches on some filesystems)
        return {}
    base = output_dir.rstrip("/") + "/"
    entries: dict[str, list[str]] = {}
    for metadata in (m for r in results for m in r.metadata_list):
        relative = metadata.path[len(base):] if metadata.path.startswith(base) else metadata.path
        entries.setdefault(relative.split("/", 1)[0], []).append(metadata.path)
    return entries


def _read_text(path: str) -> str:
    with FileSystems.open(path) as stream:
        return stream.read().decode("utf-8")


def _write_atomically(path: str, text: str) -> None:
    """The whole file or nothing: local via a temporary file and ``os.replace``; an object store
    (gs://, s3://) publishes an object only when its upload completes."""
    data = text.encode("utf-8")
    if is_local(path):
        folder = os.path.dirname(path) or "."
        handle, temp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp", dir=folder)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.remove(temp)
            raise
        return
    with FileSystems.create(path) as stream:
        stream.write(data)


def _delete(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            if is_local(path):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.lexists(path):
                    os.remove(path)
            else:
                FileSystems.delete([path])
        except (OSError, Exception):  # noqa: BLE001 (already gone, or removed by a retry)
            pass


def read_manifest(output_dir: str) -> Optional[dict]:
    """The manifest of the last finished run in ``output_dir``, or None when there is none."""
    path = FileSystems.join(output_dir, MANIFEST_NAME)
    try:
        if not FileSystems.exists(path):
            return None
        return json.loads(_read_text(path))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# the lock


@dataclass(frozen=True)
class Lock:
    """Who holds an output directory: written atomically at planning, removed when the run ends."""

    path: str
    run_id: str
    holder: Mapping[str, Any] = field(default_factory=dict)


def _lock_holder(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": utc_now()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_stale(holder: Mapping[str, Any]) -> bool:
    """True only when the lock was taken on this machine by a process that is gone.

    A lock from another machine (a Dataflow launcher, a colleague's laptop) cannot be checked
    from here: it counts as held until someone removes it.
    """
    if holder.get("host") != socket.gethostname():
        return False
    try:
        return not _pid_alive(int(holder.get("pid")))
    except (TypeError, ValueError):
        return False


def _read_lock(path: str) -> dict[str, Any]:
    try:
        return json.loads(_read_text(path))
    except (OSError, ValueError):
        return {}


def _create_exclusive(path: str, text: str) -> bool:
    """Create ``path`` only if it does not exist, atomically where the filesystem can; False if it did.

    Local: ``O_CREAT | O_EXCL``. gs://: an upload with ``if_generation_match=0`` (the object
    must not exist). Other filesystems: check, then create (not atomic: two runs started within
    the same instant may both get it; see README).
    """
    if is_local(path):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        return True
    if path.startswith("gs://"):
        try:
            from google.api_core.exceptions import PreconditionFailed
            from google.cloud import storage
        except ImportError:  # apache-beam without [gcp] cannot write gs:// anyway
            pass
        else:
            bucket, _, name = path[len("gs://"):].partition("/")
            blob = storage.Client().bucket(bucket).blob(name)
            try:
                blob.upload_from_string(text, content_type="application/json", if_generation_match=0)
            except PreconditionFailed:
                return False
            return True
    if FileSystems.exists(path):
        return False
    with FileSystems.create(path) as stream:
        stream.write(text.encode("utf-8"))
    return True


def acquire_lock(output_dir: str, run_id: str, take_over_stale: bool = False) -> Lock:
    """Take the output directory for this run, or raise OutputError naming the run that holds it."""
    path = FileSystems.join(output_dir, LOCK_NAME)
    holder = _lock_holder(run_id)
    text = json.dumps(holder, indent=1)
    if _create_exclusive(path, text):
        return Lock(path, run_id, holder)
    current = _read_lock(path)
    # Taking over a stale lock is delete-then-create: two --overwrite runs doing it in the same
    # instant could both get it (documented in README; a live lock is never taken over).
    if take_over_stale and lock_is_stale(current):
        _delete([path])
        if _create_exclusive(path, text):
            return Lock(path, run_id, holder)
        current = _read_lock(path)
    raise OutputError(f"{output_dir}: {describe_lock(path, current)}")


def describe_lock(path: str, holder: Mapping[str, Any]) -> str:
    who = (
        f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"started {holder.get('started', '?')})"
    )
    if lock_is_stale(holder):
        return (
            f"{who} stopped without finishing and left {path}; pass --overwrite to replace its "
            "files (the last finished run stays readable until this one's manifest is in place)"
        )
    return (
        f"another run is writing here: {who} holds {path}. Two runs into one output would "
        f"mix their files: wait for it, or choose another --output. If that run is no longer "
        f"going on (it was killed, or its job failed on a remote runner), delete {path}"
    )


def release_lock(lock: Optional[Lock]) -> None:
    """Remove the lock if it is still this run's (never another run's)."""
    if lock is None:
        return
    if _read_lock(lock.path).get("run_id") == lock.run_id:
        _delete([lock.path])


def release_lock_of(output_dir: str, run_id: str) -> None:
    release_lock(Lock(FileSystems.join(output_dir, LOCK_NAME), run_id))


# ---------------------------------------------------------------------------------------------
# the state of an output directory before a run


def _preview(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def check_output_dir(output_dir: str, overwrite: bool) -> list[str]:
    """Refuse an output that would mix runs; return the names an ``--overwrite`` run will replace.

    Empty or absent: fine. Otherwise without --overwrite: refused, naming what is there. With
    --overwrite: only files an osnet-beam run wrote are replaced; anything else is refused
    (``--output ~ --overwrite`` must not delete a home directory). A lock is checked here for
    a clear message, and taken atomically by :func:`acquire_lock`.
    """
    entries = list_entries(output_dir)
    if not entries:
        return []
    names = sorted(entries)
    if LOCK_NAME in entries:
        holder = _read_lock(FileSystems.join(output_dir, LOCK_NAME))
        if not (overwrite and lock_is_stale(holder)):
            raise OutputError(f"{output_dir}: {describe_lock(FileSystems.join(output_dir, LOCK_NAME), holder)}")
    foreign = [name for name in names if not _is_ours(name)]
    if foreign:
        raise OutputError(
            f"--output {output_dir} is not empty and holds files osnet-beam did not write: "
            f"{_preview(foreign)}; choose an empty or new directory"
        )
    if overwrite:
        return names
    manifest = read_manifest(output_dir)
    if manifest is not None:
        shards = len(manifest.get("features", {}).get("shards", []))
        what = (
            f"the output of run {manifest.get('run_id')} (finished {manifest.get('finished')}, "
            f"{manifest.get('counts', {}).get(metrics.ROWS_ENCODED, '?')} feature rows in {shards} shard(s))"
        )
    else:
        what = f"files of a run that did not finish: {_preview(names)}"
    raise OutputError(
        f"--output {output_dir} already holds {what}; pass --overwrite to replace it, or choose "
        "another --output"
    )


def check_output_path(output_dir: str) -> None:
    """A local output must be a directory we can create and write: not a file, not under one."""
    if not is_local(output_dir):
        return
    path = os.path.abspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"--output {output_dir} is an existing file, not a directory")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise OutputError(f"--output {output_dir} is under {probe}, which is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"--output {output_dir}: {probe} is not writable by this user")


def prepare_output_dir(output_dir: str) -> bool:
    """Create a local output directory; True if it was created here (removed again on failure)."""
    if not is_local(output_dir) or os.path.isdir(output_dir):
        return False
    try:
        os.makedirs(output_dir)
    except OSError as error:
        raise OutputError(f"--output {output_dir}: cannot create it: {error}") from None
    return True


def cleanup_failed_run(output_dir: str, run_id: str, remove_dir: bool = False) -> list[str]:
    """After a run failed or was stopped: delete its temporary and unreferenced files and its lock.

    Files of the last finished run (the one the manifest names) are never touched. Returns the
    names removed.
    """
    manifest = read_manifest(output_dir)
    if manifest is not None and manifest.get("run_id") == run_id:
        removed = []  # this run finished after all: keep its files
    else:
        entries = list_entries(output_dir)
        removed = [name for name in entries if _belongs_to(name, run_id)]
        _delete(p for name in removed for p in entries[name])
    release_lock_of(output_dir, run_id)
    if remove_dir and is_local(output_dir):
        try:
            os.rmdir(output_dir)
        except OSError:
            pass
    return removed


# ---------------------------------------------------------------------------------------------
# the manifest


def _count_parquet_rows(path: str) -> int:
    with FileSystems.open(path) as stream:
        return pq.read_metadata(pa.PythonFile(stream, mode="r")).num_rows


def _count_csv_rows(path: str) -> int:
    with FileSystems.open(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        return max(sum(1 for _ in csv.reader(text)) - 1, 0)  # less the header


def _count_errors(path: str, by_reason: dict[str, int]) -> int:
    rows = 0
    with FileSystems.open(path) as stream:
        for line in io.TextIOWrapper(stream, encoding="utf-8"):
            if line.strip():
                rows += 1
                reason = json.loads(line).get("reason", "unknown")
                by_reason[reason] = by_reason.get(reason, 0) + 1
    return rows


def _shard(path: str, output_dir: str, rows: int) -> dict[str, Any]:
    base = output_dir.rstrip("/")
    name = path[len(base) + 1:] if path.startswith(base + "/") else FileSystems.split(path)[1]
    return {"name": name, "rows": rows}


def versions() -> dict[str, str]:
    """Versions of what computes and writes the features, in this process."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name, dist in (("osnet_beam", "osnet-beam"), ("apache_beam", "apache-beam"), ("torch", "torch"),
                       ("pyarrow", "pyarrow"), ("onnxruntime", "onnxruntime")):
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def error_limit_exceeded(counts: Mapping[str, int], max_error_fraction: float) -> Optional[str]:
    """Why the run counts as failed (exit status 3), or None: every row failed, or too many did."""
    read, errors = counts.get(metrics.ROWS_READ, 0), counts.get(ERRORS, 0)
    if read == 0:
        return None
    fraction = errors / read
    if counts.get(metrics.ROWS_ENCODED, 0) == 0:
        return f"every row failed ({errors} of {read} are errors)"
    if fraction > max_error_fraction:
        return f"{fraction:.2%} of the rows are errors ({errors} of {read}), over --max_error_fraction {max_error_fraction:g}"
    return None


def finalize_run(shard_paths: Sequence[str], info: Mapping[str, Any],
                 widened: Optional[Mapping[str, tuple[str, str]]] = None) -> dict:
    """Write the manifest of a finished run, then remove older runs' files and the lock.

    Runs inside the job (its last step, on a worker) so that it also happens when the launcher
    does not wait (``--no_wait``). ``widened``: the CSV columns a value past the type sample
    widened (:mod:`pipeline.widening` puts the Parquet shards in the widened schema first).
    Idempotent: a retried step writes the same manifest.
    """
    output_dir, run_id = info["output"], info["run_id"]
    features_prefix = shard_prefix(output_dir, FEATURES_PREFIX, run_id)
    errors_prefix = shard_prefix(output_dir, ERRORS_PREFIX, run_id)
    held_prefix = shard_prefix(output_dir, HELD_PREFIX, run_id)
    paths = sorted(set(shard_paths))
    widened = dict(widened or {})
    planned = decode_schema(info["schema"])
    schema = widening.final_schema(planned, widened)
    feature_paths = [p for p in paths if p.startswith(features_prefix + "-")]
    held_paths = [p for p in paths if p.startswith(held_prefix + "-")]
    if info["output_format"] == "parquet" and (widened or held_paths):
        feature_paths = widening.widen_parquet_run(
            feature_paths, held_paths, schema, info["output_column"], output_dir, run_id, features_prefix)
    feature_shards, error_shards = [], []
    by_reason: dict[str, int] = {}
    for path in feature_paths:
        count = _count_parquet_rows(path) if info["output_format"] == "parquet" else _count_csv_rows(path)
        feature_shards.append(_shard(path, output_dir, count))
    for path in paths:
        if path.startswith(errors_prefix + "-"):
            error_shards.append(_shard(path, output_dir, _count_errors(path, by_reason)))
    encoded = sum(s["rows"] for s in feature_shards)
    errors = sum(s["rows"] for s in error_shards)
    counts = {
        metrics.ROWS_READ: encoded + errors,  # every input row is in exactly one shard
        metrics.ROWS_ENCODED: encoded,
        ERRORS: errors,
        ERRORS_BY_REASON: dict(sorted(by_reason.items())),
    }
    limit = info.get("max_error_fraction", 1.0)
    failed = error_limit_exceeded(counts, limit)
    manifest = {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "run_id": run_id,
        "started": info["started"],
        "finished": utc_now(),
        "input": info["input"],
        "model": {**info["model"], **_resolved_model(info["model"])},
        "options": info["options"],
        "counts": counts,
        "error_fraction": (errors / counts[metrics.ROWS_READ]) if counts[metrics.ROWS_READ] else 0.0,
        "max_error_fraction": limit,
        "error_limit_exceeded": failed,
        "features": {
            "format": info["output_format"],
            "column": info["output_column"],
            "schema": encode_schema(schema) if widened else info["schema"],
            "widened_columns": widening.describe(planned, widened),
            "shards": feature_shards,
        },
        "errors": {"format": "jsonl", "shards": error_shards},
        "versions": versions(),
        "launcher": info.get("launcher", {}),
    }
    _write_atomically(FileSystems.join(output_dir, MANIFEST_NAME), json.dumps(manifest, indent=1))
    # the new run is now the output: the older runs' files can go
    entries = list_entries(output_dir)
    old = [n for n in entries if _is_ours(n) and not _belongs_to(n, run_id) and n not in (MANIFEST_NAME, LOCK_NAME)]
    _delete(p for name in old for p in entries[name])
    release_lock_of(output_dir, run_id)
    return manifest


def _resolved_model(model: Mapping[str, Any]) -> dict[str, Any]:
    """What ``auto`` became on the worker that wrote the manifest (device, backend, batch size):
    its own plan settled against the launcher's (:func:`model.policy.settle`)."""
    try:
        from model.policy import RuntimePlan, plan_here, settle

        here = plan_here(model.get("backend", "auto"), model.get("device", "auto"), model.get("precision", "fp32"),
                         model.get("batch_size"))
        planned = model.get("planned")
        plan = settle(RuntimePlan(**planned), here)[0] if planned else here
        return {"resolved_device": plan.device, "resolved_backend": plan.backend, "resolved_batch_size": plan.batch_size}
    except Exception as error:  # noqa: BLE001 (the manifest must not fail for a detail)
        return {"resolved": f"unknown: {error}"}


def encode_schema(schema: pa.Schema) -> dict[str, Any]:
    """A schema for the manifest: readable names and types, and Arrow's own bytes (exact)."""
    return {
        "fields": [{"name": f.name, "type": str(f.type)} for f in schema],
        "arrow_ipc_base64": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
    }


def decode_schema(encoded: Mapping[str, Any]) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded["arrow_ipc_base64"])))


# ---------------------------------------------------------------------------------------------
# reading a run back


def _require_manifest(output_dir: str) -> dict:
    manifest = read_manifest(output_dir)
    if manifest is None:
        raise FileNotFoundError(
            f"{output_dir} holds no finished osnet-beam run (no {MANIFEST_NAME}): the run is still "
            "going on, failed, or this is not an osnet-beam output"
        )
    return manifest


def _read_csv_shard(path: str, schema: pa.Schema, column: str) -> pa.Table:
    from pyarrow import csv as pacsv

    from transforms.feature_codec import decode_features_hex

    types = {f.name: (pa.string() if f.name == column else f.type) for f in schema}
    with FileSystems.open(path) as stream:
        table = pacsv.read_csv(
            stream,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                # the writer writes a null as "" (QUOTE_NONNUMERIC): null in a typed column, while
                # a text column's "" stays the empty string (CSV cannot tell the two apart)
                column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=True
            ),
        )
    features = pa.array(
        [decode_features_hex(text) for text in table.column(column).to_pylist()], schema.field(column).type
    )
    table = table.set_column(table.schema.get_field_index(column), schema.field(column), features)
    return table.select(schema.names).cast(schema)


def read_features(output_dir: str) -> pa.Table:
    """The feature rows of exactly the run that ``output_dir``'s manifest names, as one Table.

    Works for Parquet and CSV outputs (CSV features come back as ``list<float32>`` like
    Parquet's, pass-through columns with the run's schema) on any Beam filesystem. Raises
    FileNotFoundError when no run finished there.
    """
    manifest = _require_manifest(output_dir)
    features = manifest["features"]
    schema = decode_schema(features["schema"])
    tables = []
    for shard in features["shards"]:
        path = FileSystems.join(output_dir, shard["name"])
        if features["format"] == "parquet":
            with FileSystems.open(path) as stream:
                table = pq.read_table(pa.PythonFile(stream, mode="r"), schema=schema)
        else:
            table = _read_csv_shard(path, schema, features["column"])
        if table.num_rows != shard["rows"]:
            raise ValueError(f"{path}: {table.num_rows} rows, the manifest says {shard['rows']}")
        tables.append(table)
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_errors(output_dir: str) -> list[dict]:
    """The error records of exactly the run that ``output_dir``'s manifest names."""
    manifest = _require_manifest(output_dir)
    records = []
    for shard in manifest["errors"]["shards"]:
        text = _read_text(FileSystems.join(output_dir, shard["name"]))
        records += [json.loads(line) for line in text.splitlines() if line.strip()]
    return records
