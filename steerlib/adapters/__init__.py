"""The registry of layer adapters: one small module per model family."""

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
