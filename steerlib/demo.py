"""Deprecated: the demo moved to :mod:`steerlib.app.demo`, and its prompts to
:func:`steerlib.data.demo_items` (this shim goes in the next release)."""

from __future__ import annotations

import warnings

from .app.demo import (
    SPLIT_SIZES,
    TARGETS,
    UNCHANGED_TOKENS,
    choose,
    choose_l2s,
    run_demo,
    targets,
)
from .app.demo_cli import add_arguments, run_from_args
from .data.demo import demo_items

__all__ = ["SPLIT_SIZES", "TARGETS", "UNCHANGED_TOKENS", "add_arguments", "choose", "choose_l2s", "demo_items",
           "run_demo", "run_from_args", "targets"]

warnings.warn("steerlib.demo moved to steerlib.app.demo (and demo_items to steerlib.data); steerlib.demo goes in "
              "the next release.", DeprecationWarning, stacklevel=2)
