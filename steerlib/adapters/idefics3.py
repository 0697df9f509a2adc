"""Idefics3 (SigLIP + Llama-3), ``Idefics3ForConditionalGeneration``; images nested per sample."""

from .base import Adapter

ADAPTER = Adapter(
    family="idefics3",
    model_types=("idefics3",),
    layers_path="model.text_model.layers",
    is_vlm=True,
    image_placeholder="<image>",
    nested_images=True,
    pass_position_ids=False,
)
