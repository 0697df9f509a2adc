"""Lookup of adapters by ``config.model_type``, user registration, and the fallback finder.

The built-in families are the rows of :data:`steerlib.adapters.families.BUILTIN_ADAPTERS`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..errors import UnknownArchitectureError
from .base import Adapter
from .families import BUILTIN_ADAPTERS
from .finder import auto_adapter, search_stacks

_LOG = logging.getLogger("steerlib.adapters")

__all__ = [
    "BUILTIN_ADAPTERS",
    "DEFAULT_REGISTRY",
    "AdapterRegistry",
    "fallback_adapters",
    "find_decoder_adapter",
    "get_adapter",
    "register_adapter",
]

REGISTER_HOWTO = (
    "Register one:\n"
    "    from steerlib import Adapter, register_adapter\n"
    "    register_adapter(Adapter(family='myfamily', model_types=('my_model_type',),\n"
    "                             layers_path='model.layers', is_vlm=False))\n"
    "or pass adapter=Adapter(...) to SteerableModel."
)


class AdapterRegistry:
    """A mapping ``model_type -> Adapter``. ``DEFAULT_REGISTRY`` holds the built-in families."""

    def __init__(self, adapters: Iterable[Adapter] = ()) -> None:
        self._by_type: dict[str, Adapter] = {}
        for a in adapters:
            self.register(a)

    def register(self, adapter: Adapter, *, overwrite: bool = False) -> Adapter:
        """Add an adapter for each of its model types; refuse to replace one unless ``overwrite``."""
        if not isinstance(adapter, Adapter):
            raise TypeError(f"register expects an Adapter, got {type(adapter).__name__}.")
        for mt in adapter.model_types:
            old = self._by_type.get(mt)
            if old is not None and old != adapter and not overwrite:
                raise ValueError(
                    f"model_type {mt!r} is already served by the {old.family!r} adapter; "
                    "pass overwrite=True to replace it."
                )
        for mt in adapter.model_types:
            self._by_type[mt] = adapter
        return adapter

    def families(self) -> list[str]:
        return sorted({a.family for a in self._by_type.values()})

    def model_types(self) -> list[str]:
        return sorted(self._by_type)

    def get(self, model_type: str) -> Adapter | None:
        return self._by_type.get(model_type)

    def for_model(self, model: nn.Module, *, fallback: bool = True) -> Adapter:
        """The adapter for ``model``: by ``config.model_type``, else found by the fallback."""
        mt = getattr(getattr(model, "config", None), "model_type", None)
        if mt is not None and mt in self._by_type:
            return self._by_type[mt]
        if fallback:
            found = find_decoder_adapter(model)
            if found is not None:
                warn_fallback(model, found)
                return found
        raise self.unknown(model)

    def unknown(self, model: nn.Module, detail: str = "") -> UnknownArchitectureError:
        """The error for a model without an adapter and without a findable decoder stack."""
        mt = getattr(getattr(model, "config", None), "model_type", None)
        detail = detail or search_stacks(model).report()
        return UnknownArchitectureError(
            f"Unknown architecture: model_type {mt!r} ({type(model).__name__}) has no adapter and no language "
            f"decoder stack could be found. The fallback looked at:\n{detail}\n"
            f"Known families: {', '.join(self.families())}.\n" + REGISTER_HOWTO
        )


DEFAULT_REGISTRY = AdapterRegistry(BUILTIN_ADAPTERS)


def warn_fallback(model: nn.Module, found: Adapter) -> None:
    """The warning and log line that say which stack the fallback chose."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    n = len(found.layers(model))
    msg = (f"No adapter is registered for model_type {mt!r}; using the decoder stack found at {found.layers_path!r} "
           f"({n} layers, {'vision-language' if found.is_vlm else 'text-only'}). Register an adapter to silence this.")
    _LOG.info(msg)
    warnings.warn(msg, stacklevel=4)


def register_adapter(adapter: Adapter, *, overwrite: bool = False) -> Adapter:
    """Register ``adapter`` in the default registry (so ``SteerableModel`` finds it by model type)."""
    return DEFAULT_REGISTRY.register(adapter, overwrite=overwrite)


def get_adapter(model: nn.Module, *, fallback: bool = True) -> Adapter:
    """The adapter for ``model`` from the default registry (see ``AdapterRegistry.for_model``)."""
    return DEFAULT_REGISTRY.for_model(model, fallback=fallback)


def find_decoder_adapter(model: nn.Module, processor: Any = None) -> Adapter | None:
    """The fallback's best guess at the language decoder of an unknown model (no probe run).

    Returns the adapter of the top-ranked candidate of :func:`steerlib.adapters.finder.search_stacks`
    (or None when there is none). :class:`~steerlib.engine.SteerableModel` goes further: it
    validates the ranked candidates in order with a probe forward (:func:`fallback_adapters`).
    Mixed block classes (Mllama-style cross-attention layers) are named in the adapter's notes
    and in a warning, never silently mixed in.
    """
    adapters = fallback_adapters(model, processor)
    if not adapters:
        return None
    found = adapters[0]
    if "Mixed decoder block classes" in found.notes:
        warnings.warn(f"The decoder stack at {found.layers_path!r} mixes block classes ({found.notes}).", stacklevel=2)
    return found


def fallback_adapters(model: nn.Module, processor: Any = None) -> list[Adapter]:
    """One fallback adapter per ranked candidate stack of ``model``, best first."""
    return [auto_adapter(model, c, processor) for c in search_stacks(model).ranked]
