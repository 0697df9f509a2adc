"""Deprecated alias of the tiny-LLaVA part of :mod:`steerlib.zoo` (kept for one release)."""

import warnings

warnings.warn(
    "steerlib.models moved to steerlib.zoo; import from steerlib.zoo (or steerlib.zoo.tiny_llava) instead "
    "(the old path is removed in the next release).",
    DeprecationWarning,
    stacklevel=2,
)

from ..zoo.tiny_llava import (  # noqa: E402
    PooledLlavaForConditionalGeneration,
    PooledLlavaMultiModalProjector,
    assemble_tiny_llava,
    load_tiny_llava,
    onnx_to_dinov2,
    pool_patch_grid,
)

__all__ = [
    "PooledLlavaForConditionalGeneration",
    "PooledLlavaMultiModalProjector",
    "assemble_tiny_llava",
    "load_tiny_llava",
    "onnx_to_dinov2",
    "pool_patch_grid",
]
