"""Runner arguments for osnet-beam on a Flink cluster, in one place.

``deploy/flink/submit.sh`` runs this file to get them (one per line) and the tests import
:func:`flink_args`. The default layout is the one in ``flink-gpu-taskmanager.yaml``: each Flink
TaskManager pod has a Beam Python worker pool as a sidecar container (our SDK image started with
``--worker_pool``, listening on port 50000, holding the GPU), so the TaskManager reaches it at
``localhost:50000`` (the containers of a pod share its network namespace).

    python deploy/flink/options.py --flink_master flink-jobmanager:8081 --parallelism 4
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

WORKER_POOL_PORT = 50000
DEFAULT_WORKER_POOL = f"localhost:{WORKER_POOL_PORT}"
#: Flink version of the cluster (Beam 2.77 publishes job servers for 1.19, 1.20, 2.0, 2.1, 2.2).
FLINK_VERSION = "1.20"
ENVIRONMENTS = ("external", "docker")


def flink_args(
    flink_master: str,
    *,
    parallelism: int,
    sdk_worker_parallelism: int = 1,
    environment: str = "external",
    worker_pool: str = DEFAULT_WORKER_POOL,
    image: str | None = None,
    flink_version: str = FLINK_VERSION,
    uber_jar: bool = True,
    job_server_jar: str | None = None,
) -> list[str]:
    """Beam runner arguments for a Flink session cluster at ``flink_master`` (host:port of REST).

    Args:
        parallelism: Flink parallelism of the job: TaskManagers x task slots per TaskManager.
        sdk_worker_parallelism: SDK processes each TaskManager asks its worker pool for.
        environment: "external" (worker-pool sidecar, the GPU path) or "docker" (each
            TaskManager starts SDK containers itself: needs a Docker daemon there, and Beam does
            not pass GPUs into those containers, so it is a CPU-only path).
        worker_pool: host:port of the worker pool as seen from a TaskManager (external only).
        image: the SDK image (docker only).
        uber_jar: submit through Flink's REST API as one jar (no local Java needed); False starts
            Beam's Flink job server locally instead (Java 11+ on the submitting machine).
        job_server_jar: a local copy of beam-runners-flink-<version>-job-server-<beam>.jar, for
            machines that cannot download it from Maven Central.
    """
    if environment not in ENVIRONMENTS:
        raise ValueError(f"environment must be one of {ENVIRONMENTS}, not {environment!r}")
    if parallelism < 1 or sdk_worker_parallelism < 1:
        raise ValueError("parallelism and sdk_worker_parallelism must be at least 1")
    args = [
        "--runner=FlinkRunner",
        f"--flink_master={flink_master}",
        f"--flink_version={flink_version}",
        f"--parallelism={parallelism}",
        f"--sdk_worker_parallelism={sdk_worker_parallelism}",
    ]
    if environment == "external":
        args += ["--environment_type=EXTERNAL", f"--environment_config={worker_pool}"]
    else:
        if not image:
            raise ValueError("environment='docker' needs the SDK image")
        args += ["--environment_type=DOCKER", f"--environment_config={image}"]
    if uber_jar:
        args.append("--flink_submit_uber_jar")
    if job_server_jar:
        args.append(f"--flink_job_server_jar={job_server_jar}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flink_master", required=True, help="JobManager REST address, host:8081")
    parser.add_argument("--parallelism", type=int, required=True)
    parser.add_argument("--sdk_worker_parallelism", type=int, default=1)
    parser.add_argument("--environment", choices=ENVIRONMENTS, default="external")
    parser.add_argument("--worker_pool", default=DEFAULT_WORKER_POOL)
    parser.add_argument("--image")
    parser.add_argument("--flink_version", default=FLINK_VERSION)
    parser.add_argument("--no_uber_jar", dest="uber_jar", action="store_false")
    parser.add_argument("--job_server_jar")
    options = vars(parser.parse_args(argv))
    try:
        args = flink_args(options.pop("flink_master"), **options)
    except ValueError as error:
        parser.error(str(error))
    print("\n".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
