"""The Flink submission: runner flags from deploy/flink/options.py (used by submit.sh), the job's
SDK environment built offline, and the Kubernetes manifest's shape. Nothing is submitted."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PortableOptions, StandardOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.flink_runner import FlinkRunner

from pipeline import OsNetOptions, build_pipeline, plan_job
from tests.pipeline_helpers import COLUMNS, read_seed_rows, write_csv
from weights import BUNDLED_WEIGHTS

REPO_ROOT = Path(__file__).resolve().parents[1]
FLINK_DIR = REPO_ROOT / "deploy" / "flink"
SUBMIT_ENV = {
    "FLINK_MASTER": "flink-jobmanager:8081",
    "PARALLELISM": "4",
    "SDK_WORKERS_PER_TM": "2",
    "INPUT": "gs://my-bucket/tables/*.parquet",
    "OUTPUT": "gs://my-bucket/features/run-1",
    "WEIGHTS": "gs://my-bucket/weights/osnet_ibn_x1_0_msmt17.pth",
}


def load_deploy_options():
    """deploy/flink/options.py, imported by path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("osnet_deploy_flink_options", FLINK_DIR / "options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flink_options = load_deploy_options()


def submit_args(**env: str) -> list[str]:
    """What submit.sh passes to ``python -m pipeline`` (PRINT_ARGS=1 submits nothing)."""
    full_env = {**os.environ, **SUBMIT_ENV, **env, "PRINT_ARGS": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(FLINK_DIR / "submit.sh")], env=full_env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_flink_args_external_worker_pool():
    args = flink_options.flink_args("flink-jobmanager:8081", parallelism=4, sdk_worker_parallelism=2)
    options = OsNetOptions([*args, "--input", "t.csv", "--output", "out"])
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    portable = options.view_as(PortableOptions)
    assert portable.environment_type == "EXTERNAL"
    assert portable.environment_config == "localhost:50000"
    assert int(portable.sdk_worker_parallelism) == 2  # Beam declares it as a string
    flink = options.view_as(FlinkRunnerOptions)
    assert flink.flink_master == "flink-jobmanager:8081"
    assert flink.parallelism == 4
    assert flink.flink_version == "1.20" and flink.flink_version in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    assert flink.flink_submit_uber_jar is True
    assert options.input == "t.csv" and options.output == "out"


def test_flink_args_docker_and_refusals():
    args = flink_options.flink_args("jm:8081", parallelism=1, environment="docker", image="img:1",
                                    uber_jar=False, job_server_jar="/jars/flink.jar")
    options = OsNetOptions([*args, "--input", "t.csv", "--output", "out"])
    assert options.view_as(PortableOptions).environment_type == "DOCKER"
    assert options.view_as(PortableOptions).environment_config == "img:1"
    flink = options.view_as(FlinkRunnerOptions)
    assert not flink.flink_submit_uber_jar and flink.flink_job_server_jar == "/jars/flink.jar"
    with pytest.raises(ValueError, match="image"):
        flink_options.flink_args("jm:8081", parallelism=1, environment="docker")
    with pytest.raises(ValueError, match="environment"):
        flink_options.flink_args("jm:8081", parallelism=1, environment="process")
    with pytest.raises(ValueError, match="at least 1"):
        flink_options.flink_args("jm:8081", parallelism=0)


def test_submit_script_args_parse_with_our_options():
    args = submit_args()
    runner = flink_options.flink_args("flink-jobmanager:8081", parallelism=4, sdk_worker_parallelism=2)
    assert args[: len(runner)] == runner
    options = OsNetOptions(args)
    assert options.view_as(PortableOptions).environment_type == "EXTERNAL"
    assert options.view_as(PortableOptions).environment_config == "localhost:50000"
    assert options.view_as(FlinkRunnerOptions).flink_master == "flink-jobmanager:8081"
    assert options.view_as(FlinkRunnerOptions).parallelism == 4
    assert options.input == SUBMIT_ENV["INPUT"] and options.output == SUBMIT_ENV["OUTPUT"]
    assert options.weights == SUBMIT_ENV["WEIGHTS"]
    assert options.device == "cuda" and not options.share_model_across_processes
    assert OsNetOptions(submit_args(MODEL_SHARING="shared")).share_model_across_processes
    extra = submit_args(ENVIRONMENT="docker", IMAGE="img:2", UBER_JAR="0")
    assert "--environment_config=img:2" in extra and "--flink_submit_uber_jar" not in extra


def test_job_environment_is_the_external_worker_pool(seed_table, tmp_path):
    """The pipeline proto FlinkRunner would submit: every transform in the EXTERNAL environment."""
    write_csv(tmp_path / "t.csv", [[r[c] for c in COLUMNS] for r in read_seed_rows(seed_table)[:2]])
    args = flink_options.flink_args("flink-jobmanager:8081", parallelism=2)
    options = OsNetOptions([*args, "--input", str(tmp_path / "t.csv"), "--output", str(tmp_path / "out"),
                            "--weights", BUNDLED_WEIGHTS])  # a local output: planning checks it
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options, plan_job(options))
    environment = FlinkRunner().default_environment(options)
    proto = pipeline.to_runner_api(default_environment=environment)

    (env,) = proto.components.environments.values()
    assert env.urn == common_urns.environments.EXTERNAL.urn
    payload = beam_runner_api_pb2.ExternalPayload.FromString(env.payload)
    assert payload.endpoint.url == "localhost:50000"
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"ReadRows", "DecodeCrops", "EncodeCrops/RunInference", "WriteFeatures", "WriteErrors"} <= names


def test_kubernetes_manifest():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the manifest is not parsed")
    documents = list(yaml.safe_load_all((FLINK_DIR / "flink-gpu-taskmanager.yaml").read_text()))
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    assert set(by_kind_name) == {
        ("Service", "flink-jobmanager"), ("Deployment", "flink-jobmanager"),
        ("Deployment", "flink-taskmanager"), ("NetworkPolicy", "flink-taskmanager-ingress"),
    }
    pod = by_kind_name[("Deployment", "flink-taskmanager")]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    sidecar = containers["beam-worker-pool"]
    assert sidecar["args"] == ["--worker_pool"]
    assert [p["containerPort"] for p in sidecar["ports"]] == [flink_options.WORKER_POOL_PORT]
    assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in containers["taskmanager"]["resources"].get("limits", {})
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    properties = containers["taskmanager"]["env"][0]["value"]
    assert "jobmanager.rpc.address: flink-jobmanager" in properties
    assert containers["taskmanager"]["image"].startswith(f"flink:{flink_options.FLINK_VERSION}")
    # the worker pool port is not among the ports other pods may reach
    policy = by_kind_name[("NetworkPolicy", "flink-taskmanager-ingress")]["spec"]
    open_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert flink_options.WORKER_POOL_PORT not in open_ports and policy["policyTypes"] == ["Ingress"]


def test_readme_shows_what_submit_prints():
    readme = (FLINK_DIR / "README.md").read_text()
    shown = readme.split("submits nothing:\n\n```\n", 1)[1].split("```", 1)[0].splitlines()
    assert shown == submit_args(FLINK_MASTER="localhost:8081")
