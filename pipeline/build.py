"""The job's graph: read -> decode -> encode -> write, with every bad row routed to errors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import apache_beam as beam

from model import CheckpointError, infer_architecture, load_osnet, read_state_dict
from pipeline.options import OsNetOptions
from transforms.csv_records import CsvDialect
from transforms.decode import DecodeCrops
from transforms.errors import ERRORS_TAG
from transforms.inference import EncodeCrops, OsNetModelHandler, local_weights
from transforms.progress import CountProgress
from transforms.read import InputError, InputLayout, ReadRows, inspect_input
from transforms.write import WriteErrors, WriteFeatures


@dataclass(frozen=True)
class JobPlan:
    """What was checked before the job starts: the input's layout and the model's architecture."""

    layout: InputLayout
    arch: str


def plan_job(options: OsNetOptions) -> JobPlan:
    """Check input files and weights before anything runs, so mistakes cost seconds.

    Raises ``transforms.read.InputError`` or ``model.CheckpointError`` with a message that names
    the file at fault.
    """
    for flag in ("input", "output"):
        if not getattr(options, flag):
            raise InputError(f"--{flag} is required (python -m pipeline --help lists the options)")
    try:
        dialect = CsvDialect.from_options(options.csv_delimiter, options.encoding, options.max_pixels)
    except ValueError as error:
        raise InputError(str(error)) from None
    layout = inspect_input(options.input, options.image_column, options.input_format, dialect)
    output_column = options.output_column or options.image_column
    if output_column != options.image_column and output_column in layout.columns:
        raise InputError(f"--output_column {output_column!r} is already an input column")
    try:
        weights = local_weights(options.weights)
    except Exception as error:  # OSError locally, BeamIOError and friends elsewhere
        raise CheckpointError(f"cannot read weights {options.weights}: {error}") from None
    load_osnet(weights, options.arch)  # every key and shape checked against the architecture
    arch = options.arch or infer_architecture(read_state_dict(weights))
    return JobPlan(layout, arch)


def build_pipeline(
    p: beam.Pipeline, options: OsNetOptions, plan: JobPlan, progress_dir: Optional[str] = None
) -> dict:
    """Add the job to ``p``; returns its ``features`` and ``errors`` PCollections and writes.

    With ``progress_dir`` (a folder on this machine, for runners whose workers share it), rows
    about to be written are counted there for the progress bar.
    """
    output_column = options.output_column or options.image_column
    read = p | "ReadRows" >> ReadRows(options.input, plan.layout, options.image_column, progress_dir)
    decoded = read["rows"] | "DecodeCrops" >> beam.ParDo(
        DecodeCrops(options.image_column, max_pixels=options.max_pixels)
    ).with_outputs(ERRORS_TAG, main="crops")
    handler = OsNetModelHandler(
        options.weights,
        arch=plan.arch,
        device=options.device,
        backend=options.backend,
        precision=options.precision,
        batch_size=options.batch_size,
        channel_order=options.channel_order,
        threads=options.threads,
        share_across_processes=options.share_model_across_processes,
    )
    encoded = decoded.crops | "EncodeCrops" >> EncodeCrops(handler)
    errors = (
        read["errors"],
        decoded[ERRORS_TAG],
        encoded[ERRORS_TAG],
    ) | "AllErrors" >> beam.Flatten()
    features = encoded["features"]
    if progress_dir:
        features = features | "CountFeatures" >> beam.ParDo(CountProgress(progress_dir, "features"))
        errors = errors | "CountErrors" >> beam.ParDo(CountProgress(progress_dir, "errors"))
    features_written = features | "WriteFeatures" >> WriteFeatures(
        options.output,
        plan.layout.schema,
        options.image_column,
        output_column,
        options.output_format,
        options.num_shards,
    )
    errors_written = errors | "WriteErrors" >> WriteErrors(options.output, options.num_shards)
    return {
        "features": encoded["features"],
        "errors": errors,
        "features_written": features_written,
        "errors_written": errors_written,
    }
