"""Gemma 3 multimodal, ``Gemma3ForConditionalGeneration``; images nested per sample."""

from .base import Adapter

ADAPTER = Adapter(
    family="gemma3",
    model_types=("gemma3",),
    layers_path="model.language_model.layers",
    is_vlm=True,
    image_placeholder="<start_of_image>",
    nested_images=True,
    pass_position_ids=False,
    notes="Image tokens attend bidirectionally within an image.",
)
