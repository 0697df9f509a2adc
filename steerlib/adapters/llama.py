"""Llama-family decoders (Llama, SmolLM2, Vicuna, Mistral), ``LlamaForCausalLM``."""

from .base import Adapter

ADAPTER = Adapter(
    family="llama",
    model_types=("llama", "mistral"),
    layers_path="model.layers",
)
