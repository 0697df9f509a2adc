"""Defaults shared by the library and the command line, in a module that imports nothing heavy
(the CLI's parsers read them without importing torch)."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_NEW_TOKENS"]

#: New tokens per generation unless told otherwise: ``SteerableModel.generate``, ``Steerer.generate``,
#: :func:`steerlib.eval.compare.compare`, ``steerlib generate``, ``steerlib compare`` and the demo.
DEFAULT_MAX_NEW_TOKENS = 32
