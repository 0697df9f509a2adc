"""GPT-2, ``GPT2LMHeadModel`` (absolute positions)."""

from .base import Adapter

ADAPTER = Adapter(
    family="gpt2",
    model_types=("gpt2",),
    layers_path="transformer.h",
    notes="Absolute position embeddings: position ids come from the attention mask so left padding is exact.",
)
