"""MiM-ISTD network, its selective-scan operators and its weights."""

import logging

from mim_model.config import MiMConfig
from mim_model.errors import InputShapeError, MiMError, ScanBackendUnavailableError, WeightsError
from mim_model.network import MiM

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "MiM",
    "MiMConfig",
    "MiMError",
    "InputShapeError",
    "ScanBackendUnavailableError",
    "WeightsError",
]
