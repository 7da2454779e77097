"""Running the job: options in, a finished job and a one-line summary out."""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import SetupOptions

from apache_beam.options.pipeline_options import PortableOptions, StandardOptions

from model import CheckpointError
from pipeline.build import build_pipeline, plan_job
from pipeline.console import LocalProgress, Totals, configure_logging, watch_remote_job
from pipeline.options import OsNetOptions
from transforms.read import METRICS_NAMESPACE, InputError, input_totals

_LOG = logging.getLogger("osnet-beam")


def job_counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The job's counters (committed where the runner has them, else attempted), by name."""
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    counters: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value)
    return counters


def summary_line(counters: dict[str, int], seconds: float, output: str) -> str:
    """``rows_read=.. encoded=.. errors=.. (reason=n, ...)``: the accounting a user checks."""
    errors = {k[len("errors_"):]: v for k, v in sorted(counters.items()) if k.startswith("errors_")}
    by_reason = ", ".join(f"{k}={v}" for k, v in errors.items()) or "none"
    return (
        f"osnet-beam: rows_read={counters.get('rows_read', 0)} "
        f"decoded={counters.get('rows_decoded', 0)} encoded={counters.get('rows_encoded', 0)} "
        f"errors={sum(errors.values())} ({by_reason}) in {seconds:.1f}s -> {output}"
    )


def run(argv: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Run the job to completion; returns its counters. Raises InputError / CheckpointError."""
    options = OsNetOptions(argv)
    options.view_as(SetupOptions).save_main_session = False
    started = time.monotonic()
    plan = plan_job(options)
    _LOG.info("input: %d %s file(s), columns %s; model %s", len(plan.layout.files),
              plan.layout.format, plan.layout.columns, plan.arch)
    totals = Totals(*input_totals(plan.layout))
    if workers_share_this_machine(options) and options.progress != "off":
        with LocalProgress(totals, options.progress, options.progress_interval) as progress:
            pipeline = beam.Pipeline(options=options)
            build_pipeline(pipeline, options, plan, progress_dir=progress.directory)
            result = pipeline.run()
            result.wait_until_finish()
    else:
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, options, plan)
        result = pipeline.run()
        if options.progress == "off":
            result.wait_until_finish()
        else:
            watch_remote_job(result, job_counters, totals, options.progress_interval)
    counters = job_counters(result)
    print(summary_line(counters, time.monotonic() - started, options.output), flush=True)
    return counters


def workers_share_this_machine(options: OsNetOptions) -> bool:
    """DirectRunner (in-process or multi-processing) or a portable runner with LOOPBACK workers."""
    runner = (options.view_as(StandardOptions).runner or "DirectRunner").lower()
    if runner in ("directrunner", "direct", "bundlebasedirectrunner", "swallowingdirectrunner"):
        return True
    environment = (options.view_as(PortableOptions).environment_type or "").upper()
    return environment == "LOOPBACK"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: exit status 0 on success, 2 on a bad input or checkpoint."""
    configure_logging(OsNetOptions(argv).log_level)
    try:
        run(argv)
    except (InputError, CheckpointError) as error:
        print(f"osnet-beam: error: {error}", file=sys.stderr)
        return 2
    return 0
