"""Llama 3.2 Vision, ``MllamaForConditionalGeneration``."""

from .base import Adapter

ADAPTER = Adapter(
    family="mllama",
    model_types=("mllama",),
    layers_path="model.language_model.layers",
    is_vlm=True,
    image_placeholder="<|image|>",
    nested_images=True,
    pass_position_ids=False,
    notes="The layer list interleaves cross-attention blocks (MllamaCrossAttentionDecoderLayer at "
    "config.text_config.cross_attention_layers) with self-attention blocks; layer i counts both kinds, "
    "as HF hidden_states do. The image enters through cross-attention: the only image-token position "
    "is the <|image|> marker.",
)
