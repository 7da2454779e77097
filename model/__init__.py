"""OSNet person re-identification features: model, safe checkpoint loading, preprocessing, runtimes.

No Beam here: the pipeline's transforms wrap these, and they can be used and tested on their own.
"""
from model.backends import FeatureBackend, check_precision, create_backend, default_batch_size
from model.checkpoint import CheckpointError, infer_architecture, load_osnet, read_state_dict
from model.encoder import OsNetEncoder
from model.osnet import ARCHITECTURES, FEATURE_DIM, OSNet, build_osnet
from model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_batch

__all__ = [
    "ARCHITECTURES",
    "FEATURE_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "FeatureBackend",
    "OSNet",
    "OsNetEncoder",
    "build_osnet",
    "check_precision",
    "create_backend",
    "default_batch_size",
    "infer_architecture",
    "load_osnet",
    "preprocess_batch",
    "read_state_dict",
]
