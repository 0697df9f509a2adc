"""The built-in model families: one :class:`~steerlib.adapters.base.Adapter` row per family.

This table is the only list of families in steerlib. The default registry
(:mod:`steerlib.adapters.registry`) is built from it, and the tiny test factory
(:mod:`steerlib.testing.tiny`) derives its rosters from it: a row with ``is_vlm=True`` is a
vision-language family, a row with ``nested_images=True`` takes batch images per sample. Row
order is only the order in which families are listed.

Adding a family is one row here plus one tiny builder in ``steerlib/testing/tiny.py``
(see ``docs/adding-a-model.md``). Each row's comment names the Hugging Face class it serves.
"""

from __future__ import annotations

from .base import Adapter

__all__ = ["BUILTIN_ADAPTERS"]

# shared values of several rows
_LM_LAYERS = "model.language_model.layers"  # the decoder of most *ForConditionalGeneration classes
_TEXT_MODEL_LAYERS = "model.text_model.layers"  # Idefics3 layout
_QWEN_VL_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
_QWEN_VL_NOTES = "Multimodal RoPE: position ids are computed by the model; pixel_values is a flat patch tensor."

BUILTIN_ADAPTERS: tuple[Adapter, ...] = (
    # --- vision-language families ----------------------------------------------------------------
    # LLaVA-1.5 (CLIP vision tower + Llama/Vicuna decoder), LlavaForConditionalGeneration
    Adapter(family="llava", model_types=("llava",), layers_path=_LM_LAYERS, is_vlm=True,
            image_placeholder="<image>\n", pass_position_ids=False),
    # LLaVA-NeXT (any-resolution tiles), LlavaNextForConditionalGeneration
    Adapter(family="llava_next", model_types=("llava_next",), layers_path=_LM_LAYERS, is_vlm=True,
            image_placeholder="<image>\n", pass_position_ids=False),
    # Qwen2-VL, Qwen2VLForConditionalGeneration (the paper's second model)
    Adapter(family="qwen2_vl", model_types=("qwen2_vl",), layers_path=_LM_LAYERS, is_vlm=True,
            image_placeholder=_QWEN_VL_IMAGE, pass_position_ids=False, notes=_QWEN_VL_NOTES),
    # Qwen2.5-VL, Qwen2_5_VLForConditionalGeneration
    Adapter(family="qwen2_5_vl", model_types=("qwen2_5_vl",), layers_path=_LM_LAYERS, is_vlm=True,
            image_placeholder=_QWEN_VL_IMAGE, pass_position_ids=False, notes=_QWEN_VL_NOTES),
    # Idefics3 (SigLIP + Llama-3), Idefics3ForConditionalGeneration; images nested per sample
    Adapter(family="idefics3", model_types=("idefics3",), layers_path=_TEXT_MODEL_LAYERS, is_vlm=True,
            image_placeholder="<image>", nested_images=True, pass_position_ids=False),
    # SmolVLM, SmolVLMForConditionalGeneration (Idefics3 layout); its processor needs num2words
    Adapter(family="smolvlm", model_types=("smolvlm",), layers_path=_TEXT_MODEL_LAYERS, is_vlm=True,
            image_placeholder="<image>", nested_images=True, pass_position_ids=False),
    # PaliGemma (SigLIP + Gemma, prefix-LM attention), PaliGemmaForConditionalGeneration
    Adapter(family="paligemma", model_types=("paligemma",), layers_path=_LM_LAYERS, is_vlm=True,
            image_placeholder="<image>", drop_keys=("labels",), pass_position_ids=False, prefix_lm=True,
            notes="Prefix-LM: prompt tokens attend to each other in both directions, so a prompt token's state "
                  "depends on the whole prompt. The processor returns labels, which steerlib drops."),
    # Gemma 3 multimodal, Gemma3ForConditionalGeneration; images nested per sample
    Adapter(family="gemma3", model_types=("gemma3",), layers_path=_LM_LAYERS, is_vlm=True,
            image_placeholder="<start_of_image>", nested_images=True, pass_position_ids=False,
            notes="Image tokens attend bidirectionally within an image."),
    # Llama 3.2 Vision, MllamaForConditionalGeneration
    Adapter(family="mllama", model_types=("mllama",), layers_path=_LM_LAYERS, is_vlm=True,
            image_placeholder="<|image|>", nested_images=True, pass_position_ids=False,
            notes="The layer list interleaves cross-attention blocks (MllamaCrossAttentionDecoderLayer at "
                  "config.text_config.cross_attention_layers) with self-attention blocks; layer i counts both "
                  "kinds, as HF hidden_states do. The image enters through cross-attention: the only image-token "
                  "position is the <|image|> marker."),
    # InternVL (InternViT + Qwen2/Llama), InternVLForConditionalGeneration
    Adapter(family="internvl", model_types=("internvl",), layers_path=_LM_LAYERS, is_vlm=True,
            image_placeholder="<IMG_CONTEXT>", pass_position_ids=False,
            notes="The prompt placeholder is <IMG_CONTEXT>, which the processor expands into <img>...</img>."),
    # --- text-only families ------------------------------------------------------------------------
    # Llama-family decoders (Llama, SmolLM2, Vicuna, Mistral), LlamaForCausalLM / MistralForCausalLM
    Adapter(family="llama", model_types=("llama", "mistral"), layers_path="model.layers"),
    # Qwen2 / Qwen2.5 / Qwen3 text decoders, Qwen2ForCausalLM / Qwen3ForCausalLM
    Adapter(family="qwen2", model_types=("qwen2", "qwen3"), layers_path="model.layers"),
    # GPT-2, GPT2LMHeadModel (absolute positions)
    Adapter(family="gpt2", model_types=("gpt2",), layers_path="transformer.h",
            notes="Absolute position embeddings: position ids come from the attention mask so left padding is exact."),
    # Gemma 3 text-only (e.g. Gemma-3-270M), Gemma3ForCausalLM
    Adapter(family="gemma3_text", model_types=("gemma3_text",), layers_path="model.layers"),
)
"""Every built-in family, one row each (``family`` names are unique, and so are the ``model_types``)."""
