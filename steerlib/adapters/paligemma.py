"""PaliGemma (SigLIP + Gemma, prefix-LM attention), ``PaliGemmaForConditionalGeneration``."""

from .base import Adapter

ADAPTER = Adapter(
    family="paligemma",
    model_types=("paligemma",),
    layers_path="model.language_model.layers",
    is_vlm=True,
    image_placeholder="<image>",
    drop_keys=("labels",),
    pass_position_ids=False,
    prefix_lm=True,
    notes="Prefix-LM: prompt tokens attend to each other in both directions, so a prompt token's state "
    "depends on the whole prompt. The processor returns labels, which steerlib drops.",
)
