"""Layer adapters: the :class:`Adapter` record, the built-in families (one table, :mod:`.families`) and the registry."""

from .base import Adapter, resolve_path, text_config
from .finder import Candidate, Search, detect_vlm, search_stacks
from .registry import (
    BUILTIN_ADAPTERS,
    DEFAULT_REGISTRY,
    AdapterRegistry,
    fallback_adapters,
    find_decoder_adapter,
    get_adapter,
    register_adapter,
)

__all__ = [
    "Adapter",
    "AdapterRegistry",
    "BUILTIN_ADAPTERS",
    "Candidate",
    "DEFAULT_REGISTRY",
    "Search",
    "detect_vlm",
    "fallback_adapters",
    "find_decoder_adapter",
    "get_adapter",
    "register_adapter",
    "resolve_path",
    "search_stacks",
    "text_config",
]
