"""The Dataflow submission, built offline: deploy/dataflow/submit.sh's flags, DataflowRunner dry run.

``--dry_run=True`` makes DataflowRunner build the whole job (pipeline proto, Docker environment,
Dataflow ``Job``) and return before anything is staged or sent. The worker-pool part of the job
(``Environment``: machine type, GPUs, container image) is built at submission, so it is built
here the same way, minus the upload. No network, no credentials: the input is a local table.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

apiclient = pytest.importorskip(
    "apache_beam.runners.dataflow.internal.apiclient",
    reason="DataflowRunner needs apache-beam[gcp] (pip install 'apache-beam[gcp]==2.77.0')",
)

import apache_beam as beam
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

from pipeline import OsNetOptions, build_pipeline, plan_job
from tests.pipeline_helpers import COLUMNS, read_seed_rows, write_csv
from weights import BUNDLED_WEIGHTS

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBMIT = REPO_ROOT / "deploy" / "dataflow" / "submit.sh"
IMAGE = "us-central1-docker.pkg.dev/my-project/osnet/osnet-beam:0.1.0"
SUBMIT_ENV = {
    "PROJECT": "my-project",
    "REGION": "us-central1",
    "BUCKET": "my-bucket",
    "IMAGE": IMAGE,
    "INPUT": "gs://my-bucket/tables/*.parquet",
    "OUTPUT": "gs://my-bucket/features/run-1",
    "WEIGHTS": "gs://my-bucket/weights/osnet_ibn_x1_0_msmt17.pth",
    "JOB_NAME": "osnet-beam-test",
}
OUR_TRANSFORMS = {
    "ReadRows", "DecodeCrops", "EncodeCrops", "EncodeCrops/RunInference", "WriteFeatures", "WriteErrors",
}


def submit_args(**env: str) -> list[str]:
    """The arguments submit.sh would pass to ``python -m pipeline`` (PRINT_ARGS=1 submits nothing)."""
    full_env = {**os.environ, **SUBMIT_ENV, **env, "PRINT_ARGS": "1"}
    done = subprocess.run(["bash", str(SUBMIT)], env=full_env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def replace_flag(args: list[str], name: str, value: str) -> list[str]:
    assert sum(a.startswith(f"--{name}=") for a in args) == 1, f"--{name} not passed exactly once"
    return [f"--{name}={value}" if a.startswith(f"--{name}=") else a for a in args]


@pytest.fixture(scope="module")
def local_table(seed_table, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dataflow-input") / "table.csv"
    write_csv(path, [[r[c] for c in COLUMNS] for r in read_seed_rows(seed_table)[:3]])
    return path


def dry_run(args: list[str]):
    """Build the Dataflow job for ``args`` as submit.sh would, offline; returns (job, environment)."""
    options = OsNetOptions([*args, "--dry_run=True"])
    plan = plan_job(options)
    pipeline = beam.Pipeline(runner=DataflowRunner(), options=options)
    build_pipeline(pipeline, options, plan)
    result = pipeline.run()
    job = result.job
    # What DataflowApplicationClient.create_job_description adds, without uploading anything.
    environment = apiclient.Environment(
        packages=[],
        options=job.options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url="gs://my-bucket/staging/pipeline.pb",
        proto_pipeline=job.proto_pipeline,
    ).proto
    return job, environment


def offline(args: list[str], local_table: Path) -> list[str]:
    """submit.sh's arguments with a local input and the bundled weights, so plan_job runs here."""
    args = replace_flag(args, "input", str(local_table))
    return replace_flag(args, "weights", BUNDLED_WEIGHTS)


def test_submit_script_flags_build_a_gpu_job_with_our_image_and_transforms(local_table):
    args = submit_args()
    accelerator = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver;use_nvidia_mps"
    assert f"--dataflow_service_options={accelerator}" in args
    job, environment = dry_run(offline(args, local_table))

    # the default: a model per SDK process (measured fastest), their kernels run together under MPS
    assert list(environment.service_options) == [accelerator]
    assert "use_runner_v2" in environment.experiments
    (pool,) = environment.worker_pools
    assert pool.machine_type == "n1-standard-8" and pool.disk_size_gb == 50
    assert pool.autoscaling_settings.max_num_workers == 4
    assert pool.worker_harness_container_image == IMAGE
    assert [image.container_image for image in pool.sdk_harness_container_images] == [IMAGE]
    # every transform runs in the one Docker environment: our image
    environments = job.proto_pipeline.components.environments
    assert len(environments) == 1
    (docker,) = environments.values()
    assert docker.urn == "beam:env:docker:v1"
    assert beam_runner_api_pb2.DockerPayload.FromString(docker.payload).container_image == IMAGE

    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert OUR_TRANSFORMS <= names, OUR_TRANSFORMS - names
    run_inference = [n for n in names if n.startswith("EncodeCrops/RunInference/")]
    assert run_inference, "RunInference expanded to nothing"

    # the workers get our options with the job
    sent = dict(environment.sdk_pipeline_options["options"])
    assert sent["input"] == str(local_table) and sent["output"] == SUBMIT_ENV["OUTPUT"]
    assert sent["weights"] == BUNDLED_WEIGHTS and sent["device"] == "cuda"
    assert not sent.get("share_model_across_processes")
    assert sent["sdk_location"] == "container"
    assert job.proto.name == "osnet-beam-test"
    assert job.proto.type_.name == "JOB_TYPE_BATCH"


def test_l4_single_process_variant(local_table):
    args = submit_args(GPU="l4", MODEL_SHARING="single-process", THREADS="6", PRECISION="fp16")
    _, environment = dry_run(offline(args, local_table))

    assert list(environment.service_options) == ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    (pool,) = environment.worker_pools
    assert pool.machine_type == "g2-standard-8"
    assert pool.num_threads_per_worker == 6
    assert "no_use_multiple_sdk_containers" in environment.experiments
    assert "use_multiple_sdk_containers" not in environment.experiments
    sent = dict(environment.sdk_pipeline_options["options"])
    assert sent["precision"] == "fp16"
    assert not sent.get("share_model_across_processes")


def test_a_shared_model_needs_no_mps_and_bad_choices_are_refused():
    args = submit_args(MODEL_SHARING="shared")
    assert "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver" in args
    assert "--share_model_across_processes" in args
    for env in ({"GPU": "k80"}, {"MODEL_SHARING": "sometimes"}, {"IMAGE": ""}):
        done = subprocess.run(["bash", str(SUBMIT)], env={**os.environ, **SUBMIT_ENV, **env, "PRINT_ARGS": "1"},
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode != 0 and done.stderr and not done.stdout, env
