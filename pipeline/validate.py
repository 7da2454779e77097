"""Checks of the command line before anything runs: unknown flags, bad values, paths.

Every check raises :class:`OptionError` (exit status 2 at the CLI) with a message that names the
flag, before any file is written or any worker starts.
"""
from __future__ import annotations

import argparse
import difflib
import os
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
    _BeamArgumentParser,
)

from model.policy import local_gpu, plan_runtime
from pipeline.options import OsNetOptions
from pipeline.outputs import is_local

#: Runners that run the whole job inside the launching process (and so on this machine).
IN_PROCESS_RUNNERS = frozenset({None, "", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"})
#: Runners whose job service may take options the Python SDK does not know (Flink, Spark, ...).
JOB_SERVICE_RUNNERS = frozenset({"PortableRunner", "FlinkRunner", "SparkRunner", "PrismRunner"})


class OptionError(ValueError):
    """A flag or a value the job refuses before it starts (exit status 2)."""


def _runner_name(runner: object) -> Optional[str]:
    if runner is None or isinstance(runner, str):
        name = runner
    else:
        name = type(runner).__name__
    return name.rsplit(".", 1)[-1] if name else name


def _all_flags_parser() -> argparse.ArgumentParser:
    """The parser Beam itself builds from every PipelineOptions class (ours included)."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def _our_flags() -> list[str]:
    parser = _BeamArgumentParser(allow_abbrev=False)
    OsNetOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def check_known_args(argv: Sequence[str]) -> list[str]:
    """Refuse arguments that no option (ours or any Beam runner's) takes; return those let through.

    Beam would log "Discarding unparseable args" and run with defaults, e.g. the bundled model
    for a mistyped ``--weight``. Runners with a job service (PortableRunner, FlinkRunner,
    SparkRunner) advertise options of their own only when the job is submitted, so for them an
    unknown flag passes with a warning (returned), unless it is a near-miss of one of our flags.
    """
    parser = _all_flags_parser()
    known, unknown = parser.parse_known_args(list(argv))
    if not unknown:
        return []
    every_flag = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    ours = _our_flags()
    runner = _runner_name(getattr(known, "runner", None))
    let_through: list[str] = []
    problems: list[str] = []
    previous_unknown_flag = False
    for arg in unknown:
        if not arg.startswith("-"):
            if not previous_unknown_flag:  # else: the value of the unknown flag before it
                problems.append(f"unexpected argument {arg!r} (a value without a flag?)")
            previous_unknown_flag = False
            continue
        previous_unknown_flag = "=" not in arg
        name = arg.split("=", 1)[0]
        close_ours = difflib.get_close_matches(name, ours, n=1)
        # a job service's own flag may look a little like one of ours: only a near-certain typo
        # of ours is refused there (--weight, --num_shard, --bacth_size all score above 0.85)
        if runner in JOB_SERVICE_RUNNERS and not difflib.get_close_matches(name, ours, n=1, cutoff=0.85):
            let_through.append(arg)
            continue
        close = close_ours or difflib.get_close_matches(name, every_flag, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"unknown option {name}{hint}")
    if problems:
        raise OptionError(
            "; ".join(problems) + " (python -m pipeline --help lists our options; Beam's runner "
            "options are listed at https://beam.apache.org/documentation/runners/)"
        )
    return let_through


def runs_on_this_machine(options: PipelineOptions) -> bool:
    """True when the workers run on the launching machine: DirectRunner, or LOOPBACK workers."""
    runner = _runner_name(options.view_as(StandardOptions).runner)
    if runner in IN_PROCESS_RUNNERS:
        return True
    environment = (options.view_as(PortableOptions).environment_type or "").upper()
    return environment == "LOOPBACK"


def one_local_worker(options: PipelineOptions) -> bool:
    """True when one worker on this machine runs the whole job: the DirectRunner with one worker
    (its default). Its shuffles are held in this process's memory."""
    if _runner_name(options.view_as(StandardOptions).runner) not in IN_PROCESS_RUNNERS:
        return False
    workers = options.view_as(DirectOptions).direct_num_workers
    return (os.cpu_count() or 1) == 1 if workers == 0 else workers in (None, 1)


def runs_in_this_process(options: PipelineOptions) -> bool:
    """True when the job lives and dies with this process (DirectRunner, or LOOPBACK workers,
    which are threads of this process): ``--no_wait`` makes no sense there."""
    return runs_on_this_machine(options)


def wants_no_wait(options: PipelineOptions) -> bool:
    """``--no_wait``, or Beam's own ``--no_wait_until_finish``: submit and return."""
    standard = options.view_as(StandardOptions)
    return bool(options.view_as(OsNetOptions).no_wait or getattr(standard, "no_wait_until_finish", False))


def device_precision_problem(device: str, precision: str, cuda_available: Optional[bool]) -> Optional[str]:
    """Why ``--device``/``--precision`` cannot run, or None.

    ``cuda_available`` is None when the workers are elsewhere (Dataflow, Flink, an external
    worker pool): the launcher cannot see their GPUs (or cores), so only what is wrong everywhere
    is refused here, and a worker that cannot run it fails at its first model load with the same
    message. Which precision runs on which device is :mod:`model.policy`'s rule.
    """
    if device == "cuda" and cuda_available is False:
        return "--device cuda, but CUDA is not available on this machine, where the job runs (use --device cpu or auto)"
    if device == "cpu" or (device == "auto" and cuda_available is False):
        try:
            plan_runtime("auto", "cpu", precision, cpu_is_here=cuda_available is not None)
        except ValueError as error:
            return f"--precision {precision}: {error}"
    return None


def _cuda_available() -> bool:
    return local_gpu("auto") is not None  # asks torch only where this machine has a GPU device


def check_option_values(options: PipelineOptions) -> None:
    """Refuse values that would fail (or silently misbehave) inside the job."""
    ours = options.view_as(OsNetOptions)
    problems = []
    positive = {"batch_size": ours.batch_size, "threads": ours.threads, "max_pixels": ours.max_pixels}
    for flag, value in positive.items():
        if value is not None and value < 1:
            problems.append(f"--{flag} must be at least 1, not {value}")
    if ours.num_shards is not None and ours.num_shards < 0:
        problems.append(f"--num_shards must be 0 (the runner decides) or more, not {ours.num_shards}")
    fraction = ours.max_error_fraction
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        problems.append(f"--max_error_fraction must be between 0 and 1, not {fraction}")
    if wants_no_wait(options) and runs_in_this_process(options):
        runner = _runner_name(options.view_as(StandardOptions).runner) or "DirectRunner"
        problems.append(f"--no_wait needs a runner that runs the job elsewhere (Dataflow, Flink); {runner} runs it in this process")
    cuda = _cuda_available() if runs_on_this_machine(options) else None
    problem = device_precision_problem(ours.device, ours.precision, cuda)
    if problem:
        problems.append(problem)
    if problems:
        raise OptionError("; ".join(problems))


def expand_user_paths(options: PipelineOptions) -> None:
    """``~`` in --input, --output and --weights expanded for local paths (the shell may not have)."""
    ours = options.view_as(OsNetOptions)
    for flag in ("input", "output", "weights"):
        value = getattr(ours, flag)
        if value and is_local(value) and value.startswith("~"):
            setattr(ours, flag, os.path.expanduser(value))
