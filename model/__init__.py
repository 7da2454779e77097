"""OSNet person re-identification features: model, safe checkpoint loading, preprocessing, the
runtime policy, runtimes, the pipeline's engine and the seed-compatible encoder.

No Beam here: the pipeline's transforms wrap these, and they can be used and tested on their own.
"""
from model.checkpoint import CheckpointError, infer_architecture, load_osnet, read_state_dict
from model.encoder import OsNetEncoder, l2_normalize
from model.engine import FeatureEngine
from model.osnet import ARCHITECTURES, FEATURE_DIM, OSNet, build_osnet
from model.policy import RuntimePlan, plan_here, plan_runtime
from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_batch
from model.runtimes import FeatureBackend, create_backend

__all__ = [
    "ARCHITECTURES",
    "FEATURE_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "FeatureBackend",
    "FeatureEngine",
    "OSNet",
    "OsNetEncoder",
    "RuntimePlan",
    "build_osnet",
    "create_backend",
    "infer_architecture",
    "l2_normalize",
    "load_osnet",
    "plan_here",
    "plan_runtime",
    "preprocess_batch",
    "read_state_dict",
]
