"""Beam transforms of the job (reading, decoding, inference, writing) and their pure codecs."""
import logging

#: The logger whose lines a user sees by default (``pipeline.console``): what the job found and
#: decided at planning. Per-worker detail goes to each module's own logger (``--log_level info``).
USER_LOG = logging.getLogger("osnet-beam")
