"""LLaVA-1.5 (CLIP vision tower + Llama/Vicuna decoder), ``LlavaForConditionalGeneration``."""

from .base import Adapter

ADAPTER = Adapter(
    family="llava",
    model_types=("llava",),
    layers_path="model.language_model.layers",
    is_vlm=True,
    image_placeholder="<image>\n",
    pass_position_ids=False,
)
