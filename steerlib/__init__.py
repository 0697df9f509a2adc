"""steerlib: activation steering for Hugging Face LLMs and vision-language models.

The common names are here at the top level (``from steerlib import L2S, SteerableModel, load_steerable``);
they are imported on first use, so ``import steerlib`` (and ``steerlib --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .adapters import Adapter, AdapterRegistry, get_adapter, register_adapter
    from .data import Chat, ContrastiveItem, demo_items
    from .data.hard_safety import hard_safety_items
    from .engine import Batch, Generation, SteerableModel
    from .errors import SteerlibError
    from .intervention import Intervention
    from .positions import POSITION_NAMES, Positions
    from .steerers import (
        L2S,
        P2S,
        MeanSteer,
        MeanSteerBA,
        NormRandom,
        NoSteer,
        PromptSteer,
        StaticVectors,
        Steerer,
    )
    from .zoo import load_smollm2, load_steerable

#: Top-level name -> the module that defines it.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("Adapter", "AdapterRegistry", "get_adapter", "register_adapter"), "steerlib.adapters"),
    **dict.fromkeys(("Chat", "ContrastiveItem", "demo_items"), "steerlib.data"),
    "hard_safety_items": "steerlib.data.hard_safety",
    **dict.fromkeys(("Batch", "Generation", "SteerableModel"), "steerlib.engine"),
    "SteerlibError": "steerlib.errors",
    "Intervention": "steerlib.intervention",
    **dict.fromkeys(("POSITION_NAMES", "Positions"), "steerlib.positions"),
    **dict.fromkeys(("L2S", "P2S", "MeanSteer", "MeanSteerBA", "NormRandom", "NoSteer", "PromptSteer",
                     "StaticVectors", "Steerer"), "steerlib.steerers"),
    **dict.fromkeys(("load_smollm2", "load_steerable"), "steerlib.zoo"),
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'steerlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
