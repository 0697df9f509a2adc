"""Tiny, offline, randomly initialised models of every supported family, for tests and demos.

``build_tiny("llava")`` returns a :class:`TinyModel`: a real Hugging Face model class built from a
small config (text side: hidden 64, 3 layers (Mllama 4, one of them cross-attention), 4 heads,
2 KV heads; vision side: hidden 32, 2 layers, 32 px images, patch 8), the family's processor
(``*ImageProcessorPil``, so torchvision is not needed), and a byte-level BPE tokenizer trained in
memory. Tokenizer and processor carry a chat template modelled on the real family's (see
:mod:`steerlib.testing.tiny_templates`). Nothing reads the network or the disk.

The family lists (:data:`FAMILIES`, :data:`VLM_FAMILIES`, :data:`TEXT_FAMILIES`,
:data:`NESTED_IMAGE_FAMILIES`) are read off ``steerlib.adapters.families.BUILTIN_ADAPTERS``; every
row there has one builder here (``_BUILDERS``).

Batch images: Gemma3, Idefics3, SmolVLM and Mllama want one list of images per sample
(``images=[[img], [img]]``, see :data:`NESTED_IMAGE_FAMILIES`); the others take a flat list
(``images=[img, img]``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch
import transformers as tf
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from ..adapters import BUILTIN_ADAPTERS, Adapter
from . import tiny_templates as templates
from .tiny_tokenizer import make_tokenizer

__all__ = [
    "FAMILIES",
    "FamilyRosters",
    "NESTED_IMAGE_FAMILIES",
    "TEXT_FAMILIES",
    "VLM_FAMILIES",
    "TinyModel",
    "build_tiny",
    "family_rosters",
    "tiny_image",
]


class FamilyRosters(NamedTuple):
    """The family lists of a table of adapters (see :func:`family_rosters`)."""

    families: tuple[str, ...]
    vlm: tuple[str, ...]
    text: tuple[str, ...]
    nested_images: tuple[str, ...]


def family_rosters(adapters: Iterable[Adapter] = BUILTIN_ADAPTERS) -> FamilyRosters:
    """The family lists read off a table of adapters: the vision-language families (``is_vlm``) first,
    then the text-only ones, each in table order; and the families with ``nested_images``."""
    rows = tuple(adapters)
    vlm = tuple(a.family for a in rows if a.is_vlm)
    text = tuple(a.family for a in rows if not a.is_vlm)
    return FamilyRosters(families=vlm + text, vlm=vlm, text=text,
                         nested_images=tuple(a.family for a in rows if a.nested_images))


_ROSTERS = family_rosters(BUILTIN_ADAPTERS)
#: Every family :func:`build_tiny` can build: the rows of ``BUILTIN_ADAPTERS``, vision-language families first.
FAMILIES: tuple[str, ...] = _ROSTERS.families
#: The vision-language families (``Adapter.is_vlm``).
VLM_FAMILIES: tuple[str, ...] = _ROSTERS.vlm
#: The text-only families.
TEXT_FAMILIES: tuple[str, ...] = _ROSTERS.text
#: Families whose processor wants batch images nested per sample, ``[[img], [img]]`` (``Adapter.nested_images``).
NESTED_IMAGE_FAMILIES: tuple[str, ...] = _ROSTERS.nested_images

# --- sizes ---------------------------------------------------------------------------------
_HIDDEN = 64
_LAYERS = 3
_HEADS = 4
_KV_HEADS = 2
_INTERMEDIATE = 128
_MAX_POSITIONS = 512
_IMAGE = 32
_PATCH = 8
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


@dataclass
class TinyModel:
    """A tiny random model with its processor and tokenizer.

    Attributes:
        family: one of :data:`FAMILIES`.
        model: the Hugging Face model, in eval mode, float32.
        processor: the ``ProcessorMixin`` for VLMs, the tokenizer itself for text families.
        tokenizer: the tokenizer (``processor.tokenizer`` for VLMs).
        is_vlm: whether the family takes images.
    """

    family: str
    model: PreTrainedModel
    processor: Any
    tokenizer: PreTrainedTokenizerBase
    is_vlm: bool


def tiny_image(seed: int = 0, size: int = _IMAGE) -> Image.Image:
    """A deterministic ``size`` x ``size`` RGB image: a colour gradient plus seeded noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 255.0, size)
    base = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[::-1, None], (1, size))], axis=-1
    )
    noise = rng.integers(-64, 64, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


# --- shared config pieces --------------------------------------------------------------------
def _text_kwargs(tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Decoder sizes and special-token ids shared by all families."""
    return dict(
        vocab_size=len(tok),
        hidden_size=_HIDDEN,
        intermediate_size=_INTERMEDIATE,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_KV_HEADS,
        max_position_embeddings=_MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


@functools.cache
def _without_video(name: str) -> type[ProcessorMixin]:
    """``transformers.<name>`` without its ``video_processor`` attribute (which reads as None).

    Without torchvision, ``ProcessorMixin.__init__`` fails on ``video_processor=None``
    (``VIDEO_PROCESSOR_MAPPING`` has no ``_extra_content``); images work normally without it.
    SmolVLM's own ``apply_chat_template`` reads video defaults from the video processor, so the
    subclass uses the generic ``ProcessorMixin.apply_chat_template`` (identical without videos).
    """
    cls: type[ProcessorMixin] = getattr(tf, name)

    @classmethod  # type: ignore[misc]
    def get_attributes(klass: type) -> list[str]:
        return [a for a in cls.get_attributes() if a != "video_processor"]

    namespace: dict[str, Any] = {
        "get_attributes": get_attributes,
        "video_processor": None,
        "apply_chat_template": ProcessorMixin.apply_chat_template,
        "__module__": __name__,
        "__doc__": f"{cls.__name__} without a video processor (no torchvision needed).",
    }
    return type(cls.__name__, (cls,), namespace)


class _Specials(TypedDict):
    bos_token: str
    eos_token: str
    pad_token: str


_LLAMA3_TOKENS = _Specials(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")
_LLAMA3_OTHERS = ("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
_CHATML_TOKENS = _Specials(bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
_GEMMA_TOKENS = _Specials(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
_GEMMA_OTHERS = ("<start_of_turn>", "<end_of_turn>")


# --- builders: each returns (model, processor, tokenizer) -----------------------------------------
# Each builder constructs its tokenizer and processor first, then the model under the caller's seed.
_Built = tuple[PreTrainedModel, Any, PreTrainedTokenizerBase]


def _llava(seed: int) -> _Built:
    tok = make_tokenizer(
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        named_tokens={"image_token": "<image>"},
        chat_template=templates.LLAVA,
    )
    proc = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessorPil(
            size={"shortest_edge": _IMAGE}, crop_size={"height": _IMAGE, "width": _IMAGE}
        ),
        tokenizer=tok,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=templates.LLAVA,
    )
    config = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**_VISION, image_size=_IMAGE, patch_size=_PATCH, projection_dim=32),
        text_config=tf.LlamaConfig(**_text_kwargs(tok)),
        image_token_index=tok.image_token_id,
        image_seq_length=(_IMAGE // _PATCH) ** 2,
    )
    return _seeded(tf.LlavaForConditionalGeneration, config, seed), proc, tok


_PINPOINTS = [[_IMAGE, _IMAGE], [_IMAGE, 2 * _IMAGE], [2 * _IMAGE, _IMAGE]]


def _llava_next(seed: int) -> _Built:
    tok = make_tokenizer(
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        named_tokens={"image_token": "<image>"},
        other_special_tokens=("[INST]", "[/INST]"),
        chat_template=templates.LLAVA_NEXT,
    )
    image_processor = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": _IMAGE}, crop_size={"height": _IMAGE, "width": _IMAGE}, image_grid_pinpoints=_PINPOINTS
    )
    proc = tf.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=templates.LLAVA_NEXT,
    )
    config = tf.LlavaNextConfig(
        vision_config=tf.CLIPVisionConfig(**_VISION, image_size=_IMAGE, patch_size=_PATCH, projection_dim=32),
        text_config=tf.LlamaConfig(**_text_kwargs(tok)),
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=_PINPOINTS,
    )
    return _seeded(tf.LlavaNextForConditionalGeneration, config, seed), proc, tok


def _qwen_vl(seed: int, *, v25: bool) -> _Built:
    template = templates.QWEN2_VL
    tok = make_tokenizer(
        **_CHATML_TOKENS,
        named_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        other_special_tokens=("<|im_start|>",),
        chat_template=template,
    )
    image_processor = tf.Qwen2VLImageProcessorPil(
        size={"shortest_edge": 256, "longest_edge": 4096}, patch_size=_PATCH, merge_size=2
    )
    proc_cls = _without_video("Qwen2_5_VLProcessor" if v25 else "Qwen2VLProcessor")
    proc = proc_cls(image_processor=image_processor, tokenizer=tok, chat_template=template)
    text = dict(**_text_kwargs(tok), rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]})
    ids = dict(
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id,
        vision_end_token_id=tok.vision_end_token_id,
    )
    if v25:
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=_HIDDEN,
            patch_size=_PATCH,
            spatial_merge_size=2,
            temporal_patch_size=2,
            fullatt_block_indexes=[1],
            window_size=_IMAGE,
        )
        config: Any = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        return _seeded(tf.Qwen2_5_VLForConditionalGeneration, config, seed), proc, tok
    vision = dict(
        depth=2,
        embed_dim=32,
        hidden_size=_HIDDEN,
        num_heads=2,
        mlp_ratio=2,
        patch_size=_PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    return _seeded(tf.Qwen2VLForConditionalGeneration, config, seed), proc, tok


def _idefics3_like(seed: int, *, smol: bool) -> _Built:
    row_col = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))
    if smol:
        special = _Specials(bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>")
        named = {
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        }
    else:
        special = _Specials(
            bos_token="<|begin_of_text|>", eos_token="<end_of_utterance>", pad_token="<|reserved_special_token_0|>"
        )
        named = {"image_token": "<image>"}
    tok = make_tokenizer(
        **special,
        named_tokens=named,
        other_special_tokens=("<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *row_col),
        chat_template=templates.IDEFICS3,
    )
    ip_kwargs = dict(
        size={"longest_edge": 2 * _IMAGE}, max_image_size={"longest_edge": _IMAGE}, do_image_splitting=False
    )
    image_seq_len = ((_IMAGE // _PATCH) ** 2) // 4  # scale_factor 2
    vision = tf.Idefics3VisionConfig(**_VISION, image_size=_IMAGE, patch_size=_PATCH)
    text_config = tf.LlamaConfig(**_text_kwargs(tok))
    if smol:
        proc: Any = _without_video("SmolVLMProcessor")(
            image_processor=tf.SmolVLMImageProcessorPil(**ip_kwargs),
            tokenizer=tok,
            video_processor=None,
            image_seq_len=image_seq_len,
            chat_template=templates.IDEFICS3,
        )
        config: Any = tf.SmolVLMConfig(
            vision_config=vision.to_dict(),
            text_config=text_config.to_dict(),
            image_token_id=tok.image_token_id,
            scale_factor=2,
        )
        return _seeded(tf.SmolVLMForConditionalGeneration, config, seed), proc, tok
    proc = tf.Idefics3Processor(
        image_processor=tf.Idefics3ImageProcessorPil(**ip_kwargs),
        tokenizer=tok,
        image_seq_len=image_seq_len,
        chat_template=templates.IDEFICS3,
    )
    config = tf.Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tok.image_token_id,
        scale_factor=2,
    )
    return _seeded(tf.Idefics3ForConditionalGeneration, config, seed), proc, tok


def _paligemma(seed: int) -> _Built:
    tok = make_tokenizer(
        **_GEMMA_TOKENS,
        named_tokens={"image_token": "<image>"},
        other_special_tokens=_GEMMA_OTHERS,
        chat_template=templates.PALIGEMMA,
    )
    image_processor = tf.SiglipImageProcessorPil(size={"height": _IMAGE, "width": _IMAGE})
    image_processor.image_seq_length = (_IMAGE // _PATCH) ** 2
    # the processor adds ~1150 <locXXXX>/<segXXX> tokens: size the model after it
    proc = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=templates.PALIGEMMA)
    text = tf.GemmaConfig(**_text_kwargs(tok), head_dim=_HIDDEN // _HEADS)
    config = tf.PaliGemmaConfig(
        vision_config=tf.SiglipVisionConfig(**_VISION, image_size=_IMAGE, patch_size=_PATCH).to_dict(),
        text_config=text.to_dict(),
        image_token_index=tok.image_token_id,
        projection_dim=_HIDDEN,
    )
    return _seeded(tf.PaliGemmaForConditionalGeneration, config, seed), proc, tok


def _gemma3_text_config(tok: PreTrainedTokenizerBase) -> tf.Gemma3TextConfig:
    """Gemma3's decoder: sliding-window layers around a global one, as in the real model."""
    return tf.Gemma3TextConfig(
        **_text_kwargs(tok),
        head_dim=_HIDDEN // _HEADS,
        sliding_window=_MAX_POSITIONS,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )


def _gemma3(seed: int) -> _Built:
    tok = make_tokenizer(
        **_GEMMA_TOKENS,
        named_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        other_special_tokens=_GEMMA_OTHERS,
        chat_template=templates.GEMMA3,
    )
    tokens_per_image = 4  # (image / patch / pooling kernel 2) ** 2
    proc = tf.Gemma3Processor(
        image_processor=tf.Gemma3ImageProcessorPil(size={"height": _IMAGE, "width": _IMAGE}),
        tokenizer=tok,
        image_seq_length=tokens_per_image,
        chat_template=templates.GEMMA3,
    )
    config = tf.Gemma3Config(
        text_config=_gemma3_text_config(tok).to_dict(),
        vision_config=tf.SiglipVisionConfig(**_VISION, image_size=_IMAGE, patch_size=_PATCH).to_dict(),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    return _seeded(tf.Gemma3ForConditionalGeneration, config, seed), proc, tok


def _gemma3_text(seed: int) -> _Built:
    tok = make_tokenizer(**_GEMMA_TOKENS, other_special_tokens=_GEMMA_OTHERS, chat_template=templates.GEMMA3_TEXT)
    return _seeded(tf.Gemma3ForCausalLM, _gemma3_text_config(tok), seed), tok, tok


def _mllama(seed: int) -> _Built:
    tok = make_tokenizer(
        **_LLAMA3_TOKENS,
        named_tokens={"image_token": "<|image|>"},
        other_special_tokens=(*_LLAMA3_OTHERS, "<|python_tag|>"),
        chat_template=templates.MLLAMA,
    )
    proc = tf.MllamaProcessor(
        image_processor=tf.MllamaImageProcessorPil(size={"height": _IMAGE, "width": _IMAGE}, max_image_tiles=2),
        tokenizer=tok,
        chat_template=templates.MLLAMA,
    )
    vision = tf.MllamaVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=2,
        image_size=_IMAGE,
        patch_size=_PATCH,
        max_num_tiles=2,
        intermediate_layers_indices=[0],
        vision_output_dim=64,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    )
    text_kwargs = _text_kwargs(tok) | {"num_hidden_layers": _LAYERS + 1}
    text = tf.MllamaTextConfig(**text_kwargs, cross_attention_layers=[1])
    config = tf.MllamaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=tok.image_token_id
    )
    return _seeded(tf.MllamaForConditionalGeneration, config, seed), proc, tok


def _internvl(seed: int) -> _Built:
    tok = make_tokenizer(
        **_CHATML_TOKENS,
        named_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        other_special_tokens=("<|im_start|>",),
        chat_template=templates.INTERNVL,
    )
    tokens_per_image = ((_IMAGE // _PATCH) ** 2) // 4  # downsample_ratio 0.5
    proc = _without_video("InternVLProcessor")(
        image_processor=tf.GotOcr2ImageProcessorPil(size={"height": _IMAGE, "width": _IMAGE}),
        tokenizer=tok,
        image_seq_length=tokens_per_image,
        chat_template=templates.INTERNVL,
    )
    vision = tf.InternVLVisionConfig(
        **_VISION,
        image_size=[_IMAGE, _IMAGE],
        patch_size=[_PATCH, _PATCH],
    )
    config = tf.InternVLConfig(
        vision_config=vision.to_dict(),
        text_config=tf.Qwen2Config(**_text_kwargs(tok)).to_dict(),
        image_token_id=tok.context_image_token_id,
        image_seq_length=tokens_per_image,
        downsample_ratio=0.5,
    )
    return _seeded(tf.InternVLForConditionalGeneration, config, seed), proc, tok


def _llama(seed: int) -> _Built:
    tok = make_tokenizer(**_LLAMA3_TOKENS, other_special_tokens=_LLAMA3_OTHERS, chat_template=templates.LLAMA)
    return _seeded(tf.LlamaForCausalLM, tf.LlamaConfig(**_text_kwargs(tok)), seed), tok, tok


def _qwen2(seed: int) -> _Built:
    tok = make_tokenizer(**_CHATML_TOKENS, other_special_tokens=("<|im_start|>",), chat_template=templates.QWEN2)
    return _seeded(tf.Qwen2ForCausalLM, tf.Qwen2Config(**_text_kwargs(tok)), seed), tok, tok


def _gpt2(seed: int) -> _Built:
    end = "<|endoftext|>"
    tok = make_tokenizer(bos_token=end, eos_token=end, pad_token=end, chat_template=templates.GPT2)
    config = tf.GPT2Config(
        vocab_size=len(tok),
        n_embd=_HIDDEN,
        n_layer=_LAYERS,
        n_head=_HEADS,
        n_inner=_INTERMEDIATE,
        n_positions=_MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return _seeded(tf.GPT2LMHeadModel, config, seed), tok, tok


_BUILDERS: Mapping[str, Callable[[int], _Built]] = MappingProxyType(
    {
        "llava": _llava,
        "llava_next": _llava_next,
        "qwen2_vl": lambda seed: _qwen_vl(seed, v25=False),
        "qwen2_5_vl": lambda seed: _qwen_vl(seed, v25=True),
        "idefics3": lambda seed: _idefics3_like(seed, smol=False),
        "smolvlm": lambda seed: _idefics3_like(seed, smol=True),
        "paligemma": _paligemma,
        "gemma3": _gemma3,
        "mllama": _mllama,
        "internvl": _internvl,
        "llama": _llama,
        "qwen2": _qwen2,
        "gpt2": _gpt2,
        "gemma3_text": _gemma3_text,
    }
)


def _seeded(model_cls: type[PreTrainedModel], config: Any, seed: int) -> PreTrainedModel:
    """Build ``model_cls(config)`` from ``torch.manual_seed(seed)`` without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model


def _finish(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Float32, eval mode, and a generation config with pad/bos/eos so ``generate`` stays quiet."""
    model.float().eval()
    eos = [tok.eos_token_id]
    for extra in ("<|end_of_text|>", "<end_of_turn>", "<|endoftext|>", "<eos>"):
        i = tok.convert_tokens_to_ids(extra) if extra in tok.get_vocab() else None
        if i is not None and i not in eos:
            eos.append(int(i))
    gen = model.generation_config
    gen.pad_token_id = tok.pad_token_id
    gen.bos_token_id = tok.bos_token_id
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    gen.do_sample = False


def build_tiny(family: str, seed: int = 0) -> TinyModel:
    """Build the tiny random model of ``family`` (one of :data:`FAMILIES`) with its processor.

    The same ``seed`` always gives the same weights; the caller's torch RNG state is left alone.
    Every call returns new objects (tokenizer and processor included), so callers may mutate them.
    Chat templates are set on both the tokenizer and the processor. Batch images for
    :data:`NESTED_IMAGE_FAMILIES` (gemma3, idefics3, smolvlm, mllama) go in nested per sample
    (``[[img], [img]]``), for the other VLMs flat (``[img, img]``). Tokenizers default to right
    padding, like the real ones: pass ``padding_side="left"`` for batched generation.

    Raises:
        ValueError: for a family not in :data:`FAMILIES`.
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown tiny model family {family!r}; choose one of: {', '.join(FAMILIES)}.")
    builder = _BUILDERS.get(family)
    if builder is None:
        raise ValueError(f"The family {family!r} has an adapter row in steerlib/adapters/families.py but no tiny "
                         "builder: add one to _BUILDERS in steerlib/testing/tiny.py.")
    model, processor, tok = builder(seed)
    _finish(model, tok)
    return TinyModel(family=family, model=model, processor=processor, tokenizer=tok, is_vlm=family in VLM_FAMILIES)
