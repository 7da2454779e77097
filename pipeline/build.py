"""The job's graph: read -> decode -> encode -> write -> manifest, with every bad row routed to errors."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, TestOptions

from model.contract import CheckpointError
from model.graph_cache import GraphExportError
from model.policy import RuntimePlan, local_gpu, plan_runtime
from pipeline import outputs
from pipeline.options import OsNetOptions
from pipeline.validate import OptionError, check_option_values, expand_user_paths, one_local_worker, runs_on_this_machine
from transforms import USER_LOG
from transforms.csv_records import CsvDialect
from transforms.decode import DecodeCrops
from transforms.errors import ERRORS_TAG
from transforms.inference import EncodeCrops, OsNetModelHandler, graph_for_workers, local_weights
from transforms.progress import CountProgress
from transforms.read import InputError, InputLayout, ReadRows, inspect_input
from transforms.write import WriteErrors, WriteFeatures, features_schema


@dataclass(frozen=True)
class JobPlan:
    """What was checked before the job starts: the input's layout, the model and how it runs,
    this run's identity."""

    layout: InputLayout
    arch: str
    #: backend, device, precision and batch size, planned for the workers' GPU (Beam's batch size)
    runtime: Optional[RuntimePlan] = None
    run_id: str = field(default_factory=outputs.new_run_id)
    started: str = field(default_factory=outputs.utc_now)
    input_files: tuple = ()
    weights_sha256: str = ""
    #: names in --output the run replaces (--overwrite), decided at planning
    replaces: tuple = ()


def worker_accelerator(options: OsNetOptions) -> Optional[str]:
    """The GPU type Dataflow attaches to each worker
    (``--dataflow_service_options=worker_accelerator=type:NAME;count:N;...``), or None."""
    for entry in options.view_as(GoogleCloudOptions).dataflow_service_options or ():
        key, _, value = entry.partition("=")
        if key.strip() == "worker_accelerator":
            for part in value.split(";"):
                name, _, setting = part.partition(":")
                if name.strip() == "type" and setting.strip():
                    return setting.strip()
    return None


def plan_workers_runtime(options: OsNetOptions) -> RuntimePlan:
    """How the workers will run the model, as far as the launcher can tell: for this machine's
    GPU and CPU when the job runs here, else for the accelerator the runner is asked to attach
    (each worker re-plans with the card it has: :meth:`OsNetModelHandler.worker_plan`)."""
    ours = options.view_as(OsNetOptions)
    here = runs_on_this_machine(options)
    gpu = local_gpu(ours.device) if here else worker_accelerator(options)
    try:
        return plan_runtime(ours.backend, ours.device, ours.precision, ours.batch_size, gpu, cpu_is_here=here)
    except ValueError as error:
        raise OptionError(f"--backend {ours.backend} --device {ours.device} --precision {ours.precision}: {error}") from None


def _input_files(files: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    sizes = {}
    try:
        for result in FileSystems.match(list(files)):
            for metadata in result.metadata_list:
                sizes[metadata.path] = metadata.size_in_bytes
    except Exception:  # noqa: BLE001 (sizes are for the manifest only)
        pass
    return tuple({"path": f, "size": sizes.get(f)} for f in files)


def check_output_not_in_input(input_pattern: str, output_dir: str) -> None:
    """Refuse an output whose files the input glob would match: the next run would read them."""
    absolute = outputs.is_local(input_pattern) and outputs.is_local(output_dir)
    pattern = os.path.abspath(input_pattern) if absolute else input_pattern
    base = os.path.abspath(output_dir) if absolute else output_dir.rstrip("/")
    regex = re.compile(FileSystem.translate_pattern(pattern))
    for name in ("features-RUN-00000-of-00001.parquet", "features-RUN-00000-of-00001.csv",
                 "errors-RUN-00000-of-00001.jsonl"):
        if regex.match(f"{base}/{name}"):
            raise OptionError(
                f"--output {output_dir} is inside what --input {input_pattern} matches: a later run "
                f"would read this run's {name.split('-')[0]} files as input; choose an --output "
                "outside the input"
            )


def plan_job(options: OsNetOptions) -> JobPlan:
    """Check options, input files, weights and the output before anything runs (exit 2 at the CLI).

    Raises ``OptionError``, ``transforms.read.InputError``, ``model.CheckpointError`` or
    ``pipeline.outputs.OutputError`` with a message that names the flag or file at fault. Writes
    nothing: the output is claimed later, by :func:`pipeline.run.run`.
    """
    ours = options.view_as(OsNetOptions)
    for flag in ("input", "output"):
        if not getattr(ours, flag):
            raise InputError(f"--{flag} is required (python -m pipeline --help lists the options)")
    expand_user_paths(options)
    check_option_values(options)
    check_output_not_in_input(ours.input, ours.output)
    outputs.check_output_path(ours.output)
    try:
        dialect = CsvDialect.from_options(ours.csv_delimiter, ours.encoding, ours.max_pixels)
    except ValueError as error:
        raise InputError(str(error)) from None
    layout = inspect_input(ours.input, ours.image_column, ours.input_format, dialect)
    output_column = ours.output_column or ours.image_column
    if output_column != ours.image_column and output_column in layout.columns:
        raise InputError(f"--output_column {output_column!r} is already an input column")
    try:
        weights = local_weights(ours.weights)
    except Exception as error:  # OSError locally, BeamIOError and friends elsewhere
        raise CheckpointError(f"cannot read weights {ours.weights}: {error}") from None
    runtime = plan_workers_runtime(options)
    dry_run = bool(options.view_as(TestOptions).dry_run)  # as Beam reads it: any value
    # every key and shape checked against the architecture (inferred from the keys when not given)
    graph = None
    if runtime.backend == "onnxruntime" and runs_on_this_machine(options) and not dry_run:
        # checked, exported and the export checked by a child process, once per machine: the
        # workers here find the graph, and this process imports no torch (model/graph_cache.py)
        try:
            graph = graph_for_workers(weights, ours.arch)
        except GraphExportError as error:
            raise CheckpointError(f"--weights {ours.weights}: {error}") from None
        except OSError:  # no writable temporary folder: checked here; the workers export it themselves
            pass
    if graph is not None:
        arch, weights_sha256 = graph.arch, graph.weights_sha256
    else:
        from model.checkpoint import load_osnet  # torch: the module itself runs, or workers are elsewhere

        with open(weights, "rb") as stream:  # read once: hashed, then parsed
            checkpoint = stream.read()
        named = io.BytesIO(checkpoint)
        named.name = weights  # what the checkpoint's error messages call it
        arch, weights_sha256 = load_osnet(named, ours.arch).arch, hashlib.sha256(checkpoint).hexdigest()
    replaces: tuple = ()
    if not dry_run:  # a dry run touches no output (and works offline for gs:// outputs)
        replaces = tuple(outputs.check_output_dir(ours.output, ours.overwrite))
    return JobPlan(
        layout,
        arch,
        runtime,
        input_files=_input_files(layout.files),
        weights_sha256=weights_sha256,
        replaces=replaces,
    )


def _run_info(options: OsNetOptions, plan: JobPlan, output_column: str) -> dict[str, Any]:
    """What the manifest says about the run, decided at planning and sent with the job."""
    ours = options.view_as(OsNetOptions)
    schema = features_schema(plan.layout.schema, ours.image_column, output_column)
    ours_names = _our_option_names()
    everything = options.get_all_options(drop_default=False, retain_unknown_options=True)
    set_by_user = options.get_all_options(drop_default=True, retain_unknown_options=True)
    return {
        "run_id": plan.run_id,
        "started": plan.started,
        "output": ours.output,
        "output_format": ours.output_format,
        "output_column": output_column,
        "schema": outputs.encode_schema(schema),
        "max_error_fraction": ours.max_error_fraction,
        "input": {
            "pattern": ours.input,
            "format": plan.layout.format,
            "files": [dict(f) for f in plan.input_files] or [{"path": f} for f in plan.layout.files],
            "columns": plan.layout.columns,
        },
        "model": {
            "weights": ours.weights,
            "weights_sha256": plan.weights_sha256,
            "arch": plan.arch,
            "device": ours.device,
            "backend": ours.backend,
            "precision": ours.precision,
            "batch_size": ours.batch_size,
            "threads": ours.threads,
            "channel_order": ours.channel_order,
            "share_model_across_processes": ours.share_model_across_processes,
            "planned": dataclasses.asdict(plan.runtime) if plan.runtime else None,
        },
        "options": {k: everything.get(k) for k in ours_names if _jsonable(everything.get(k))},
        "runner_options": {k: v for k, v in sorted(set_by_user.items()) if k not in ours_names and _jsonable(v)},
        "launcher": {"argv": list(sys.argv[1:]), "versions": outputs.versions(), "planned_at": time.time()},
    }


def _our_option_names() -> list[str]:
    import argparse

    parser = argparse.ArgumentParser()
    OsNetOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    return sorted(a.dest for a in parser._actions if a.dest != "help")


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


def build_pipeline(
    p: beam.Pipeline, options: OsNetOptions, plan: JobPlan, progress_dir: Optional[str] = None
) -> dict:
    """Add the job to ``p``; returns its ``features`` and ``errors`` PCollections, writes, manifest.

    With ``progress_dir`` (a folder on this machine, for runners whose workers share it), rows
    about to be written are counted there for the progress bar.
    """
    ours = options.view_as(OsNetOptions)
    output_column = ours.output_column or ours.image_column
    # the files planned (and checked) are the files read: the glob is not matched again
    spread = not one_local_worker(options)
    if not spread and any(not f.splittable for f in plan.layout.csv_plans or ()):
        USER_LOG.info("one worker runs the job here: the records of the files read whole go straight on "
                      "(spreading them would first hold them all in this machine's memory)")
    read = p | "ReadRows" >> ReadRows(plan.layout, ours.image_column, progress_dir, spread_whole_files=spread)
    decoded = read["rows"] | "DecodeCrops" >> beam.ParDo(
        DecodeCrops(ours.image_column, max_pixels=ours.max_pixels)
    ).with_outputs(ERRORS_TAG, main="crops")
    handler = OsNetModelHandler(
        ours.weights,
        arch=plan.arch,
        device=ours.device,
        backend=ours.backend,
        precision=ours.precision,
        batch_size=ours.batch_size,
        channel_order=ours.channel_order,
        threads=ours.threads,
        share_across_processes=ours.share_model_across_processes,
        plan=plan.runtime,
    )
    encoded = decoded.crops | "EncodeCrops" >> EncodeCrops(handler, ours.image_column)
    errors = (
        read["errors"],
        decoded[ERRORS_TAG],
        encoded[ERRORS_TAG],
    ) | "AllErrors" >> beam.Flatten()
    features = encoded["features"]
    if progress_dir:
        features = features | "CountFeatures" >> beam.ParDo(CountProgress(progress_dir, "features"))
        errors = errors | "CountErrors" >> beam.ParDo(CountProgress(progress_dir, "errors"))
    written = features | "WriteFeatures" >> WriteFeatures(
        ours.output,
        plan.layout.schema,
        ours.image_column,
        output_column,
        ours.output_format,
        ours.num_shards,
        run_id=plan.run_id,
        csv_types=plan.layout.format == "csv",
    )
    features_written = written["shards"]
    errors_written = errors | "WriteErrors" >> WriteErrors(ours.output, ours.num_shards, run_id=plan.run_id)
    manifest = (
        (features_written, errors_written)
        | "AllShards" >> beam.Flatten()
        | "ShardList" >> beam.combiners.ToList()
        | "WriteManifest"
        >> beam.Map(outputs.finalize_run, _run_info(options, plan, output_column),
                    widened=beam.pvalue.AsDict(written["widened"]))
    )
    return {
        "features": encoded["features"],
        "errors": errors,
        "features_written": features_written,
        "errors_written": errors_written,
        "manifest": manifest,
    }
