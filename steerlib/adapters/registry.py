"""Lookup of adapters by ``config.model_type``, user registration, and the fallback finder.

The built-in families are the rows of :data:`steerlib.adapters.families.BUILTIN_ADAPTERS`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from torch import nn

from ..errors import UnknownArchitectureError
from .base import Adapter, text_config
from .families import BUILTIN_ADAPTERS

__all__ = [
    "BUILTIN_ADAPTERS",
    "DEFAULT_REGISTRY",
    "AdapterRegistry",
    "find_decoder_adapter",
    "get_adapter",
    "register_adapter",
]

_SKIP = ("vision", "visual", "encoder", "image", "audio", "projector")

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
                warnings.warn(
                    f"No adapter is registered for model_type {mt!r}; using the decoder stack found at "
                    f"{found.layers_path!r} ({len(found.layers(model))} layers). Register an adapter to silence this.",
                    stacklevel=3,
                )
                return found
        raise UnknownArchitectureError(
            f"Unknown architecture: model_type {mt!r} ({type(model).__name__}) has no adapter and no language "
            f"decoder stack could be found. Known families: {', '.join(self.families())}.\n" + REGISTER_HOWTO
        )


DEFAULT_REGISTRY = AdapterRegistry(BUILTIN_ADAPTERS)


def register_adapter(adapter: Adapter, *, overwrite: bool = False) -> Adapter:
    """Register ``adapter`` in the default registry (so ``SteerableModel`` finds it by model type)."""
    return DEFAULT_REGISTRY.register(adapter, overwrite=overwrite)


def get_adapter(model: nn.Module, *, fallback: bool = True) -> Adapter:
    """The adapter for ``model`` from the default registry (see ``AdapterRegistry.for_model``)."""
    return DEFAULT_REGISTRY.for_model(model, fallback=fallback)


def find_decoder_adapter(model: nn.Module) -> Adapter | None:
    """Find the language decoder's ``ModuleList`` in an unknown model.

    Takes the first ``nn.ModuleList`` named ``layers``, ``h`` or ``blocks`` whose path mentions no
    vision/encoder part and whose length equals the text config's ``num_hidden_layers`` (when the
    config states it). Mixed block classes (Mllama-style cross-attention layers) are reported in
    the adapter's notes and a warning, never silently mixed in.
    """
    cfg = text_config(getattr(model, "config", None))
    want = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or not name:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in ("layers", "h", "blocks"):
            continue
        if any(s in name.lower() for s in _SKIP):
            continue
        if want is not None and len(mod) != want:
            continue
        kinds = sorted({type(b).__name__ for b in mod})
        notes = ""
        if len(kinds) > 1:
            idx = {k: [i for i, b in enumerate(mod) if type(b).__name__ == k] for k in kinds}
            notes = "Mixed decoder block classes: " + "; ".join(f"{k} at {v}" for k, v in idx.items())
            warnings.warn(f"The decoder stack at {name!r} mixes block classes ({notes}); layer i counts all of them.",
                          stacklevel=3)
        is_vlm = any(any(s in n.lower() for s in ("vision", "visual")) for n, _ in model.named_children()) or any(
            "vision" in n.lower() for n, _ in model.named_modules() if n.count(".") <= 2
        )
        mt = getattr(getattr(model, "config", None), "model_type", "unknown")
        return Adapter(family=f"auto:{mt}", model_types=(str(mt),), layers_path=name, is_vlm=is_vlm,
                       pass_position_ids=not is_vlm, notes=notes)
    return None
