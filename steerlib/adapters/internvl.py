"""InternVL (InternViT + Qwen2/Llama), ``InternVLForConditionalGeneration``."""

from .base import Adapter

ADAPTER = Adapter(
    family="internvl",
    model_types=("internvl",),
    layers_path="model.language_model.layers",
    is_vlm=True,
    image_placeholder="<IMG_CONTEXT>",
    pass_position_ids=False,
    notes="The prompt placeholder is <IMG_CONTEXT>, which the processor expands into <img>...</img>.",
)
