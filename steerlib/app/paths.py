"""Where the command line finds data sets: ``--data-root`` or ``$STEERLIB_DATA``, nothing guessed.

``$STEERLIB_DATA`` names a folder holding one sub-folder per data set (``text-safety``,
``pope``, ``coco128-train2017``, ...); ``--data-root`` names the data set's own folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

__all__ = ["DATA_ENV", "DATA_SETS", "data_dir", "data_root"]

#: The data sets ``steerlib compare --data`` knows (their recipes: :mod:`steerlib.app.recipes`).
DATA_SETS = ("text-safety", "pope", "pope-coco", "mmsb")

#: The environment variable naming the folder of the data sets.
DATA_ENV = "STEERLIB_DATA"


def data_root() -> Path | None:
    """``$STEERLIB_DATA`` as a path, or None when it is not set."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else None


def data_dir(name: str, explicit: str | os.PathLike[str] | None = None, *, flag: str = "--data-root") -> Path:
    """The folder of data set ``name``: ``explicit`` (the ``--data-root`` value) when given, else
    ``$STEERLIB_DATA/<name>``.

    Raises:
        DataError: neither is given; the message says what to pass.
    """
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    root = data_root()
    if root is None:
        raise DataError(f"Where is the {name!r} data set? Pass {flag} <folder of {name}>, or set "
                        f"{DATA_ENV} to the folder that holds {name}/ (e.g. export {DATA_ENV}=../shared/data).")
    return root / name
