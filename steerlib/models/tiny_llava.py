"""Deprecated alias of :mod:`steerlib.zoo.tiny_llava` (kept for one release; import from ``steerlib.zoo``)."""

import warnings

warnings.warn(
    "steerlib.models.tiny_llava moved to steerlib.zoo.tiny_llava; import from steerlib.zoo.tiny_llava instead "
    "(the old path is removed in the next release).",
    DeprecationWarning,
    stacklevel=2,
)

from ..zoo.tiny_llava import *  # noqa: E402, F401, F403
from ..zoo.cache import CACHE_RECORD  # noqa: E402, F401
from ..zoo.tiny_llava import CACHE_FORMAT, __all__  # noqa: E402, F401
