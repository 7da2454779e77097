"""How a DirectRunner job uses this machine: its bundles, in threads or processes.

Beam's DirectRunner runs one bundle at a time by default: the one thread reads, parses and
decodes a batch of rows, then waits while the model's threads encode it, then reads the next.
Neither half overlaps the other, so the model's cores idle while the rows are read, and the
reading thread idles while they encode. A local run therefore takes Beam's own remedy by default:
:data:`BUNDLE_THREADS` bundles at a time, in threads of this process
(``--direct_running_mode=multi_threading``), which share the one model (weights loaded once) and
its threads; while one bundle waits for the network, the other reads and decodes
(bench/README.md, "Bundles in threads"). Either of Beam's flags on the command line
(``--direct_num_workers``, ``--direct_running_mode``) is taken as given instead:
``--direct_num_workers=1`` runs one bundle at a time as before, and
``--direct_num_workers=N --direct_running_mode=multi_processing`` runs N worker processes.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.validate import IN_PROCESS_RUNNERS, runner_name

__all__ = ["BUNDLE_THREADS", "DIRECT_FLAGS", "default_bundle_threads", "spreads_whole_files"]

#: Bundles a local run processes at once by default: two, so that one is read and decoded while
#: the other waits for the network. More add nothing on the measurements (bench/README.md).
BUNDLE_THREADS = 2
#: Beam's flags that say how the DirectRunner runs its bundles; given, they are left alone.
DIRECT_FLAGS = ("--direct_num_workers", "--direct_running_mode")


def _names_a_direct_flag(args: Sequence[str]) -> bool:
    return any(arg.split("=", 1)[0] in DIRECT_FLAGS for arg in args)


def default_bundle_threads(options: PipelineOptions, args: Sequence[str]) -> Optional[str]:
    """Set a DirectRunner job whose command line names neither :data:`DIRECT_FLAGS` to run
    :data:`BUNDLE_THREADS` bundles at a time in threads (where this process may use two cores or
    more); returns what was set, for the log, or None where nothing was."""
    if runner_name(options.view_as(StandardOptions).runner) not in IN_PROCESS_RUNNERS or _names_a_direct_flag(args):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if cores < 2:
        return None
    direct = options.view_as(DirectOptions)
    direct.direct_running_mode = "multi_threading"
    direct.direct_num_workers = BUNDLE_THREADS
    return f"--direct_running_mode=multi_threading --direct_num_workers={BUNDLE_THREADS}"


def spreads_whole_files(options: PipelineOptions) -> bool:
    """Whether the records of files read whole (compressed, multi-line cells) are redistributed
    over the workers before they are parsed: yes, except where one process runs the whole job
    (the DirectRunner in memory or with bundles in threads). There the redistribution would hold
    every record of those files in this process's memory, for threads that share one
    interpreter: the records go straight on."""
    if runner_name(options.view_as(StandardOptions).runner) not in IN_PROCESS_RUNNERS:
        return True
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers
    several = (os.cpu_count() or 1) > 1 if workers == 0 else (workers or 1) > 1
    return several and direct.direct_running_mode == "multi_processing"
