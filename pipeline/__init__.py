"""The osnet-beam job: options, graph and entry point. Uses ``transforms``, which uses ``model``."""
from pipeline.build import JobPlan, build_pipeline, plan_job
from pipeline.options import OsNetOptions
from pipeline.outputs import read_errors, read_features
from pipeline.run import main, run

__all__ = ["JobPlan", "OsNetOptions", "build_pipeline", "main", "plan_job", "read_errors", "read_features", "run"]
