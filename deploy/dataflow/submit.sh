#!/usr/bin/env bash
# Submit osnet-beam to Google Cloud Dataflow (Runner v2) on GPU workers, with the custom SDK image.
#
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket \
#   IMAGE=us-central1-docker.pkg.dev/my-project/osnet/osnet-beam:0.1.0 \
#   INPUT='gs://my-bucket/tables/*.parquet' OUTPUT=gs://my-bucket/features/run-1 \
#   WEIGHTS=gs://my-bucket/weights/osnet_ibn_x1_0_msmt17.pth \
#   deploy/dataflow/submit.sh [more pipeline flags, e.g. --output_format csv]
#
# Run it from the repository root, in the environment that built nothing but submits: Python 3.11
# with `pip install .[dataflow]` (Beam 2.77.0, the same as in the image).
#
# Knobs (environment variables, defaults in brackets):
#   GPU            t4 | l4 [t4]: NVIDIA T4 on N1 machines, or L4 on G2 machines
#   MACHINE_TYPE   [n1-standard-8 for t4, g2-standard-8 for l4]; vCPUs = SDK processes per VM
#   GPU_COUNT      [1] GPUs per VM (the job uses the first one; keep 1 unless you know better)
#   MODEL_SHARING  per-process | shared | single-process [per-process], see README "GPU memory":
#                    per-process: one model per SDK process, NVIDIA MPS on (measured fastest)
#                    shared: one model per VM, all SDK processes send it batches (least memory)
#                    single-process: one SDK process per VM with THREADS threads
#   THREADS        [8] worker harness threads, single-process mode only
#   DISK_SIZE_GB   [50] boot disk per worker: the image is several GB unpacked
#   MAX_WORKERS    [4] autoscaling ceiling (GPU quota: MAX_WORKERS x GPU_COUNT GPUs)
#   DEVICE         [cuda] cuda fails fast on a worker without a usable GPU; auto falls back to CPU
#   PRECISION      [fp32] fp32 | fp16 | bf16: fp16 is faster on T4 and L4 (check the features
#                  against an fp32 run first); bf16 needs L4 or newer
#   BATCH_SIZE     [unset: the project's measured default for the device]
#   JOB_NAME       [osnet-beam-<UTC time>]
#   SERVICE_ACCOUNT  worker service account e-mail [unset: the Compute Engine default]
#   PRINT_ARGS=1   print the pipeline arguments, one per line, and submit nothing
set -euo pipefail

: "${PROJECT:?set PROJECT (Google Cloud project id)}"
: "${REGION:?set REGION (e.g. us-central1; it must have the GPU type)}"
: "${BUCKET:?set BUCKET (gs bucket name for temp and staging files, no gs://)}"
: "${IMAGE:?set IMAGE (the pushed SDK container, see deploy/dataflow/README.md)}"
: "${INPUT:?set INPUT (glob of CSV or Parquet shards, e.g. gs://bucket/tables/*.parquet)}"
: "${OUTPUT:?set OUTPUT (output directory, e.g. gs://bucket/features/run-1)}"
: "${WEIGHTS:?set WEIGHTS (checkpoint on gs://; the bundled demo weights are in the image too)}"

GPU=${GPU:-t4}
case "$GPU" in
  t4) ACCELERATOR=nvidia-tesla-t4; DEFAULT_MACHINE=n1-standard-8 ;;
  l4) ACCELERATOR=nvidia-l4; DEFAULT_MACHINE=g2-standard-8 ;;
  *) echo "submit.sh: GPU must be t4 or l4, not '$GPU' (others: see README)" >&2; exit 2 ;;
esac
MACHINE_TYPE=${MACHINE_TYPE:-$DEFAULT_MACHINE}
GPU_COUNT=${GPU_COUNT:-1}
WORKER_ACCELERATOR="worker_accelerator=type:${ACCELERATOR};count:${GPU_COUNT};install-nvidia-driver"

MODEL_SHARING=${MODEL_SHARING:-per-process}
SHARING_ARGS=()
case "$MODEL_SHARING" in
  shared) SHARING_ARGS=(--share_model_across_processes) ;;
  per-process) WORKER_ACCELERATOR="${WORKER_ACCELERATOR};use_nvidia_mps" ;;
  single-process)
    SHARING_ARGS=(--experiments=no_use_multiple_sdk_containers
                  "--number_of_worker_harness_threads=${THREADS:-8}") ;;
  *) echo "submit.sh: MODEL_SHARING must be shared, per-process or single-process" >&2; exit 2 ;;
esac

ARGS=(
  --runner=DataflowRunner
  "--project=${PROJECT}"
  "--region=${REGION}"
  "--job_name=${JOB_NAME:-osnet-beam-$(date -u +%Y%m%d-%H%M%S)}"
  "--temp_location=gs://${BUCKET}/tmp"
  "--staging_location=gs://${BUCKET}/staging"
  # the SDK, the project and its dependencies all come from the image: nothing staged per job
  "--sdk_container_image=${IMAGE}"
  --sdk_location=container
  --experiments=use_runner_v2
  "--dataflow_service_options=${WORKER_ACCELERATOR}"
  "--machine_type=${MACHINE_TYPE}"
  "--disk_size_gb=${DISK_SIZE_GB:-50}"
  "--max_num_workers=${MAX_WORKERS:-4}"
  "${SHARING_ARGS[@]}"
  "--input=${INPUT}"
  "--output=${OUTPUT}"
  "--weights=${WEIGHTS}"
  "--device=${DEVICE:-cuda}"
  "--precision=${PRECISION:-fp32}"
)
if [ -n "${BATCH_SIZE:-}" ]; then ARGS+=("--batch_size=${BATCH_SIZE}"); fi
if [ -n "${SERVICE_ACCOUNT:-}" ]; then ARGS+=("--service_account_email=${SERVICE_ACCOUNT}"); fi
ARGS+=("$@")

if [ "${PRINT_ARGS:-0}" = 1 ]; then
  printf '%s\n' "${ARGS[@]}"
  exit 0
fi
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" -m pipeline "${ARGS[@]}"
