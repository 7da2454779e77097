"""Bundled model weights, shipped inside the package so workers have them too.

``BUNDLED_WEIGHTS`` is torchreid's model-zoo ``osnet_x0_25`` trained on MSMT17 (MIT licence):
a small demo default. Production runs pass ``--weights`` (see README.md in this folder).
"""
from pathlib import Path

BUNDLED_WEIGHTS = str(Path(__file__).resolve().with_name("osnet_x0_25_msmt17.pth"))
