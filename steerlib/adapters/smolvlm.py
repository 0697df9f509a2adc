"""SmolVLM, ``SmolVLMForConditionalGeneration`` (Idefics3 layout); its processor needs num2words."""

from .base import Adapter

ADAPTER = Adapter(
    family="smolvlm",
    model_types=("smolvlm",),
    layers_path="model.text_model.layers",
    is_vlm=True,
    image_placeholder="<image>",
    nested_images=True,
    pass_position_ids=False,
)
