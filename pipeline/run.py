"""Running the job: options in, a finished job, its manifest and a one-line summary out.

Exit status of ``python -m pipeline``: 0 done; 1 the job failed (traceback); 2 refused before
the job started (a bad flag, value, input, checkpoint or output; nothing written); 3 the job ran
but its errors are over ``--max_error_fraction`` (by default: every row failed); 130 / 143
stopped by SIGINT / SIGTERM (this run's temporary files and lock removed, the previous output
untouched).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions, StandardOptions, TestOptions

from model.contract import CheckpointError
from pipeline import outputs
from pipeline.build import JobPlan, build_pipeline, plan_job
from pipeline.console import LOG_LEVELS, LocalProgress, Totals, configure_logging, watch_remote_job
from pipeline import stop
from pipeline.options import OsNetOptions
from pipeline.stop import StopGuard
from pipeline.validate import OptionError, check_known_args, runs_in_this_process, runs_on_this_machine, wants_no_wait
from transforms import beam_ml, metrics
from transforms.read import InputError, input_totals

_LOG = logging.getLogger("osnet-beam")
EXIT_FAILED, EXIT_REFUSED, EXIT_TOO_MANY_ERRORS = 1, 2, 3
#: Errors that refuse the job before it starts: exit status 2 and one line.
REFUSALS = (InputError, CheckpointError, OptionError, outputs.OutputError)


def _log_level(argv: Optional[Sequence[str]]) -> str:
    """``--log_level`` as given (before the options are checked: refusals are logged too)."""
    known, _ = _LOG_LEVEL_PARSER.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return known.log_level


_LOG_LEVEL_PARSER = argparse.ArgumentParser(add_help=False)
_LOG_LEVEL_PARSER.add_argument("--log_level", default="warning", choices=LOG_LEVELS)


def job_counters(result: beam.runners.runner.PipelineResult) -> Optional[dict[str, int]]:
    """The job's counters (committed where the runner has them, else attempted), by name; None
    when the runner reports no metrics."""
    try:
        results = result.metrics()
        if results is None:
            return None
        query = results.query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    except (NotImplementedError, AttributeError):
        return None
    counters: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value)
    return counters


def manifest_counters(manifest: dict) -> dict[str, int]:
    """The counters as the manifest counted them from the shards (every row is in one shard)."""
    counts = manifest["counts"]
    return metrics.counters_from_counts(counts[metrics.ROWS_ENCODED], counts.get(outputs.ERRORS_BY_REASON, {}))


def summary_line(counters: dict[str, int], seconds: float, output: str, note: str = "") -> str:
    """``rows_read=.. encoded=.. errors=.. (reason=n, ...)``: the accounting a user checks."""
    errors = metrics.errors_by_reason(counters)
    by_reason = ", ".join(f"{k}={v}" for k, v in errors.items()) or "none"
    return (
        f"osnet-beam: rows_read={counters.get(metrics.ROWS_READ, 0)} "
        f"decoded={counters.get(metrics.ROWS_DECODED, 0)} encoded={counters.get(metrics.ROWS_ENCODED, 0)} "
        f"errors={sum(errors.values())} ({by_reason}) in {seconds:.1f}s -> {output}"
        + (f" [{note}]" if note else "")
    )


@dataclass
class Outcome:
    """What a run ended with: its counters, its manifest, and why it counts as failed (or None)."""

    counters: dict[str, int]
    manifest: Optional[dict] = None
    failure: Optional[str] = None


def _log_plan(options: OsNetOptions, plan) -> None:
    """What was found and planned, in three lines: input, model, output."""
    ours = options.view_as(OsNetOptions)
    rows, _ = input_totals(plan.layout)
    size = sum(f.get("size") or 0 for f in plan.input_files)
    count = len(plan.layout.files)
    _LOG.info(
        "input: %d %s file%s, %.1f MB%s; columns %s", count, plan.layout.format, "" if count == 1 else "s",
        size / 1e6, f", {rows:,} rows" if rows is not None else "", ", ".join(plan.layout.columns),
    )
    runtime = plan.runtime.describe()
    if not runs_on_this_machine(options):  # each worker settles it with the card it has
        runtime += " as planned for the workers"
    _LOG.info("model: %s from %s; %s", plan.arch, ours.weights, runtime)
    _LOG.info("output: %s (%s), run %s", ours.output, ours.output_format, plan.run_id)


def _runner_name(options: OsNetOptions) -> str:
    runner = options.view_as(StandardOptions).runner
    return (runner if isinstance(runner, str) else type(runner).__name__) if runner else "DirectRunner"


def _describe_dry_run(options: OsNetOptions, plan, result) -> str:
    ours = options.view_as(OsNetOptions)
    cloud = options.view_as(GoogleCloudOptions)
    runner = _runner_name(options)
    where = ""
    if "Dataflow" in runner:
        name = getattr(getattr(getattr(result, "job", None), "proto", None), "name", None) or cloud.job_name
        where = f" job {name} (project {cloud.project}, region {cloud.region})"
    size = sum(f.get("size") or 0 for f in plan.input_files)
    return (
        f"osnet-beam: dry run: {runner} would run{where}: {len(plan.layout.files)} {plan.layout.format} "
        f"input file(s) ({size} bytes), model {plan.arch} from {ours.weights}, device {ours.device}, "
        f"precision {ours.precision}, output {ours.output} (run {plan.run_id}; not checked or locked "
        f"in a dry run); nothing was submitted"
    )


def _print_submitted(options: OsNetOptions, plan, result) -> None:
    ours = options.view_as(OsNetOptions)
    job_id = None
    for attribute in ("job_id", "_job_id"):
        value = getattr(result, attribute, None)
        try:
            job_id = value() if callable(value) else value
        except Exception:  # noqa: BLE001
            job_id = None
        if job_id:
            break
    line = f"osnet-beam: submitted to {_runner_name(options)}: job {job_id or '(the runner gave no id)'}"
    if "Dataflow" in _runner_name(options) and job_id:
        cloud = options.view_as(GoogleCloudOptions)
        line += (f"; console https://console.cloud.google.com/dataflow/jobs/{cloud.region}/{job_id}"
                 f"?project={cloud.project}")
    line += (f"; it writes {outputs.MANIFEST_NAME} in {ours.output} (run {plan.run_id}) when it "
             "finishes; not waiting")
    print(line, flush=True)


def _new_pipeline(options: OsNetOptions) -> beam.Pipeline:
    """A Beam pipeline; the runner's own validation of its options (Dataflow's project id, temp
    location, ...) is a refusal (exit 2), not a traceback."""
    try:
        return beam.Pipeline(options=options)
    except ValueError as error:
        if "validations errors" in str(error):
            raise OptionError(" ".join(str(error).split())) from None
        raise


def job_options(args: Sequence[str]) -> OsNetOptions:
    """The job's options from its command line, with what every run sets itself: no main session
    to pickle, and our Beam plugin, which SDK workers import before the job's DoFns so that
    RunInference comes without torch (transforms/beam_ml.py)."""
    options = OsNetOptions(list(args))
    setup = options.view_as(SetupOptions)
    setup.save_main_session = False
    setup.beam_plugins = sorted({*(setup.beam_plugins or ()), beam_ml.__name__})
    return options


def execute(argv: Optional[Sequence[str]] = None) -> Outcome:
    """Plan, claim the output, run the job, and read back its manifest.

    Raises one of ``REFUSALS`` before anything is written; on a failure or a signal after that,
    removes this run's temporary files and lock, then re-raises.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    passed_on = check_known_args(args)
    if passed_on:
        _LOG.warning("options the Python SDK does not know, left to the runner's job service: %s", passed_on)
    options = job_options(args)
    ours = options.view_as(OsNetOptions)
    started = time.monotonic()
    plan = plan_job(options)
    _log_plan(options, plan)
    totals = Totals(*input_totals(plan.layout))
    progress = None
    if runs_on_this_machine(options) and ours.progress != "off" and not options.view_as(TestOptions).dry_run:
        progress = LocalProgress(totals, ours.progress, ours.progress_interval)
    pipeline = _new_pipeline(options)
    build_pipeline(pipeline, options, plan, progress_dir=progress.directory if progress else None)
    if options.view_as(TestOptions).dry_run:  # as Beam reads it: any value is a dry run
        result = pipeline.run() if "Dataflow" in _runner_name(options) else None  # builds, submits nothing
        print(_describe_dry_run(options, plan, result), flush=True)
        return Outcome({})
    try:
        created = outputs.prepare_output_dir(ours.output)
        outputs.acquire_lock(ours.output, plan.run_id, take_over_stale=ours.overwrite)
    except BaseException:
        if progress is not None:
            progress.close()
        raise
    job = _Cleanup(options, plan, created)
    with StopGuard(job), progress or contextlib.nullcontext():
        job.result = result = pipeline.run()
        if wants_no_wait(options):
            _print_submitted(options, plan, result)
            return Outcome({})
        if progress is None and ours.progress != "off":
            watch_remote_job(result, job_counters, totals, ours.progress_interval)
        else:
            result.wait_until_finish()
        state = str(getattr(result, "state", ""))
        if any(s in state for s in ("FAILED", "CANCELLED", "STOPPED")):
            raise RuntimeError(f"the job ended in state {state}")
    manifest = outputs.read_manifest(ours.output)
    if manifest is None or manifest.get("run_id") != plan.run_id:
        raise RuntimeError(f"the job finished but wrote no manifest of run {plan.run_id} in {ours.output}")
    counters = job_counters(result)
    note = ""
    if not counters:
        counters = manifest_counters(manifest)
        note = f"{_runner_name(options)} reports no metrics: counts from the output shards"
    elif any(counters.get(name, 0) != manifest["counts"][name] for name in (metrics.ROWS_ENCODED, metrics.ROWS_READ)):
        _LOG.warning("the runner's counters %s differ from the rows in the output shards %s (a retried "
                     "bundle counted twice?); the manifest has the shards' counts", counters, manifest["counts"])
    for name, change in manifest["features"].get("widened_columns", {}).items():
        print(f"osnet-beam: column {name!r} is {change['type']}, not {change['planned']} as the files' first "
              f"records had it: a later value ({change['example']!r}) did not fit; every value kept its text",
              flush=True)
    failure = manifest.get("error_limit_exceeded")
    if failure:
        note = "; ".join(filter(None, [note, f"FAILED: {failure}"]))
    print(summary_line(counters, time.monotonic() - started, ours.output, note), flush=True)
    return Outcome(counters, manifest, failure)


@dataclass
class _Cleanup:
    """What a failed or stopped run leaves is removed (never the previous run's files); a remote
    job is cancelled first."""

    options: OsNetOptions
    plan: JobPlan
    created_dir: bool
    result: Optional[beam.runners.runner.PipelineResult] = None

    def __call__(self) -> None:
        ours = self.options.view_as(OsNetOptions)
        if self.result is not None and not runs_in_this_process(self.options):
            try:
                self.result.cancel()
            except Exception as cancel_error:  # noqa: BLE001
                _LOG.error("could not cancel the job (%s): it may still be running and will write "
                           "%s itself; its files were left alone", cancel_error, ours.output)
                return
        removed = outputs.cleanup_failed_run(ours.output, self.plan.run_id, remove_dir=self.created_dir)
        if removed:
            _LOG.info("removed this run's unfinished files: %s", removed)


def run(argv: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Run the job to completion; returns its counters. Raises one of ``REFUSALS`` before it starts."""
    return execute(argv).counters


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; the exit statuses are in this module's docstring."""
    configure_logging(_log_level(argv))
    stop.own_the_process()
    try:
        outcome = execute(argv)
    except REFUSALS as error:
        print(f"osnet-beam: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except BaseException as error:
        signum = stop.stopped_by()
        if signum is not None:  # however the runner passed the stop on
            stop.exit_stopped(signum)  # does not return: see pipeline/stop.py
        if isinstance(error, KeyboardInterrupt):  # Ctrl-C before the job started
            print(stop.stop_message(signal.SIGINT), file=sys.stderr)
            return stop.exit_status(signal.SIGINT)
        raise
    if outcome.failure:
        print(f"osnet-beam: error: {outcome.failure}; the rows and their reasons are in the errors "
              "shards (see the manifest)", file=sys.stderr)
        return EXIT_TOO_MANY_ERRORS
    return 0
