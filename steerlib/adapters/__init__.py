"""Layer adapters: the :class:`Adapter` record, the built-in families (one table, :mod:`.families`) and the registry."""

from .base import Adapter, resolve_path, text_config
from .registry import (
    BUILTIN_ADAPTERS,
    DEFAULT_REGISTRY,
    AdapterRegistry,
    find_decoder_adapter,
    get_adapter,
    register_adapter,
)

__all__ = [
    "Adapter",
    "AdapterRegistry",
    "BUILTIN_ADAPTERS",
    "DEFAULT_REGISTRY",
    "find_decoder_adapter",
    "get_adapter",
    "register_adapter",
    "resolve_path",
    "text_config",
]
