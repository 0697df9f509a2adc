"""Deprecated alias of :mod:`steerlib.zoo.weights` (kept for one release; import from ``steerlib.zoo``)."""

import warnings

warnings.warn(
    "steerlib.weights moved to steerlib.zoo.weights; import from steerlib.zoo instead "
    "(the old path is removed in the next release).",
    DeprecationWarning,
    stacklevel=2,
)

from .zoo.cache import ENV_CACHE  # noqa: E402, F401
from .zoo.cache import finish_build as finish_cache_build  # noqa: E402, F401
from .zoo.weights import *  # noqa: E402, F401, F403
from .zoo.weights import CACHE_FORMAT, __all__  # noqa: E402, F401
