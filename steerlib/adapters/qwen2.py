"""Qwen2 / Qwen2.5 / Qwen3 text decoders, ``Qwen2ForCausalLM``."""

from .base import Adapter

ADAPTER = Adapter(
    family="qwen2",
    model_types=("qwen2", "qwen3"),
    layers_path="model.layers",
)
