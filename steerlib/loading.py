"""Deprecated alias of :mod:`steerlib.zoo.loading` (kept for one release; import from ``steerlib.zoo``)."""

import warnings

warnings.warn(
    "steerlib.loading moved to steerlib.zoo.loading; import load_steerable from steerlib.zoo instead "
    "(the old path is removed in the next release).",
    DeprecationWarning,
    stacklevel=2,
)

from .zoo.loading import *  # noqa: E402, F401, F403
from .zoo.loading import __all__  # noqa: E402, F401
