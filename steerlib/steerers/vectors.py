"""Deprecated: :class:`StaticVectors` now lives in :mod:`steerlib.steerers.static`."""

import warnings

from .static import StaticVectors, as_vector_dict

warnings.warn("steerlib.steerers.vectors moved to steerlib.steerers.static (or import StaticVectors from "
              "steerlib.steerers); the old path will be removed.", DeprecationWarning, stacklevel=2)

__all__ = ["StaticVectors", "as_vector_dict"]
