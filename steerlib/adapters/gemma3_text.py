"""Gemma 3 text-only (e.g. Gemma-3-270M), ``Gemma3ForCausalLM``."""

from .base import Adapter

ADAPTER = Adapter(
    family="gemma3_text",
    model_types=("gemma3_text",),
    layers_path="model.layers",
)
