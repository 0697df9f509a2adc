"""Qwen2-VL, ``Qwen2VLForConditionalGeneration`` (the paper's second model)."""

from .base import Adapter

ADAPTER = Adapter(
    family="qwen2_vl",
    model_types=("qwen2_vl",),
    layers_path="model.language_model.layers",
    is_vlm=True,
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    pass_position_ids=False,
    notes="Multimodal RoPE: position ids are computed by the model; pixel_values is a flat patch tensor.",
)
