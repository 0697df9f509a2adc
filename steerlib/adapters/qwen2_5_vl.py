"""Qwen2.5-VL, ``Qwen2_5_VLForConditionalGeneration``."""

from .base import Adapter

ADAPTER = Adapter(
    family="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    layers_path="model.language_model.layers",
    is_vlm=True,
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    pass_position_ids=False,
    notes="Multimodal RoPE: position ids are computed by the model; pixel_values is a flat patch tensor.",
)
