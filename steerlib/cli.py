"""Deprecated: the command line moved to :mod:`steerlib.app.cli` (this shim goes in the next release).

``python -m steerlib.cli ...`` still runs it; use ``steerlib ...`` or ``python -m steerlib.app.cli ...``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from .app.cli import EXAMPLES, main
from .app.paths import DATA_ENV, data_root

__all__ = ["EXAMPLES", "default_data_root", "main"]

warnings.warn("steerlib.cli moved to steerlib.app.cli; import main from there (steerlib.cli goes in the next "
              "release).", DeprecationWarning, stacklevel=2)


def default_data_root() -> Path:
    """Deprecated: ``$STEERLIB_DATA`` (see :mod:`steerlib.app.paths`; nothing is guessed any more)."""
    warnings.warn("steerlib.cli.default_data_root is deprecated; use steerlib.app.paths.data_dir(name, explicit) "
                  f"or set ${DATA_ENV}.", DeprecationWarning, stacklevel=2)
    root = data_root()
    if root is None:
        from .errors import DataError

        raise DataError(f"Set {DATA_ENV} to the folder of the data sets (e.g. export {DATA_ENV}=../shared/data); "
                        "the data root is no longer guessed.")
    return root


if __name__ == "__main__":
    sys.exit(main())
