#!/usr/bin/env bash
# Submit osnet-beam to a Flink session cluster whose TaskManagers run the Beam worker-pool sidecar
# (deploy/flink/flink-gpu-taskmanager.yaml).
#
#   FLINK_MASTER=localhost:8081 PARALLELISM=2 \
#   INPUT='gs://my-bucket/tables/*.parquet' OUTPUT=gs://my-bucket/features/run-1 \
#   WEIGHTS=gs://my-bucket/weights/osnet_ibn_x1_0_msmt17.pth \
#   deploy/flink/submit.sh [more pipeline flags, e.g. --output_format csv]
#
# Run from anywhere, in a Python 3.11 environment with this project installed (`pip install .`,
# Beam 2.77.0 as in the SDK image). INPUT, OUTPUT and WEIGHTS must be on storage every
# TaskManager pod can read and write (gs://, s3://, hdfs://, or a volume mounted at the same path in
# the sidecar); INPUT and WEIGHTS are also read here, before submission, to check them.
#
# Knobs (environment variables, defaults in brackets):
#   FLINK_MASTER        JobManager REST address host:port (kubectl port-forward svc/flink-jobmanager 8081)
#   PARALLELISM         Flink parallelism = TaskManagers x task slots each
#   SDK_WORKERS_PER_TM  [1] SDK processes per TaskManager (its slots share them)
#   MODEL_SHARING       per-process | shared [per-process]: one model per SDK process (measured
#                       fastest), or one per GPU served to the others (least GPU memory)
#   ENVIRONMENT         external | docker [external]; docker needs IMAGE and is CPU only
#   WORKER_POOL         [localhost:50000] worker pool address as seen from a TaskManager
#   IMAGE               SDK image, for ENVIRONMENT=docker
#   FLINK_VERSION       [1.20] the cluster's Flink version (1.19, 1.20, 2.0, 2.1, 2.2)
#   JOB_SERVER_JAR      local beam-runners-flink-<v>-job-server-2.77.0.jar (else downloaded once)
#   UBER_JAR            [1] 1: upload one jar through Flink's REST API; 0: run Beam's job server here (Java)
#   DEVICE              [cuda] cuda fails fast when the sidecar has no GPU; auto falls back to CPU
#   PRINT_ARGS=1        print the pipeline arguments, one per line, and submit nothing
set -euo pipefail

: "${FLINK_MASTER:?set FLINK_MASTER (JobManager REST host:port, e.g. localhost:8081)}"
: "${PARALLELISM:?set PARALLELISM (TaskManagers x slots per TaskManager)}"
: "${INPUT:?set INPUT (glob of CSV or Parquet shards on shared storage)}"
: "${OUTPUT:?set OUTPUT (output directory on shared storage)}"
: "${WEIGHTS:?set WEIGHTS (checkpoint on shared storage)}"

cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}

RUNNER_OPTS=(--flink_master "$FLINK_MASTER" --parallelism "$PARALLELISM"
             --sdk_worker_parallelism "${SDK_WORKERS_PER_TM:-1}"
             --environment "${ENVIRONMENT:-external}"
             --worker_pool "${WORKER_POOL:-localhost:50000}"
             --flink_version "${FLINK_VERSION:-1.20}")
if [ -n "${IMAGE:-}" ]; then RUNNER_OPTS+=(--image "$IMAGE"); fi
if [ -n "${JOB_SERVER_JAR:-}" ]; then RUNNER_OPTS+=(--job_server_jar "$JOB_SERVER_JAR"); fi
if [ "${UBER_JAR:-1}" = 0 ]; then RUNNER_OPTS+=(--no_uber_jar); fi
# one source of truth for the runner flags: deploy/flink/options.py (tested)
RUNNER_TEXT=$("$PYTHON" deploy/flink/options.py "${RUNNER_OPTS[@]}")
mapfile -t ARGS <<<"$RUNNER_TEXT"

case "${MODEL_SHARING:-per-process}" in
  shared) ARGS+=(--share_model_across_processes) ;;
  per-process) ;;
  *) echo "submit.sh: MODEL_SHARING must be shared or per-process" >&2; exit 2 ;;
esac
ARGS+=("--input=${INPUT}" "--output=${OUTPUT}" "--weights=${WEIGHTS}" "--device=${DEVICE:-cuda}" "$@")

if [ "${PRINT_ARGS:-0}" = 1 ]; then
  printf '%s\n' "${ARGS[@]}"
  exit 0
fi
exec "$PYTHON" -m pipeline "${ARGS[@]}"
