"""Model builders that ship with steerlib (nothing here is registered with transformers globally)."""

from .tiny_llava import (
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
