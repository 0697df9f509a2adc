"""Progress bars: ``tqdm`` that also honours ``TQDM_DISABLE`` when the caller passes ``disable=``.

tqdm reads ``TQDM_DISABLE`` from the environment only for calls that do not pass ``disable``, and
steerlib's calls pass it (``progress=False``); this subclass makes the variable win, so
``TQDM_DISABLE=1`` (or ``steerlib --quiet``) silences every bar. Library notices go through
``logging.getLogger("steerlib")``, not through bars or prints.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm as _tqdm

__all__ = ["bars_disabled", "tqdm"]


def bars_disabled() -> bool:
    """Whether ``TQDM_DISABLE`` asks for no progress bars (any value but empty, 0 or false)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no", "off")


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:  # noqa: N802 - a drop-in for tqdm.auto.tqdm
    """``tqdm.auto.tqdm(...)``, disabled when :func:`bars_disabled`. A function, not a subclass: a
    subclass defined here would travel by value (with tqdm's write lock) inside remote requests."""
    if bars_disabled():
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)
