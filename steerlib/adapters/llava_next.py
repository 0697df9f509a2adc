"""LLaVA-NeXT (any-resolution tiles), ``LlavaNextForConditionalGeneration``."""

from .base import Adapter

ADAPTER = Adapter(
    family="llava_next",
    model_types=("llava_next",),
    layers_path="model.language_model.layers",
    is_vlm=True,
    image_placeholder="<image>\n",
    pass_position_ids=False,
)
