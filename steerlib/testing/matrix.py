"""The family matrix: tiny random-weight models of every decoder family transformers can build offline.

:func:`matrix_families` lists every ``model_type`` of the installed transformers' causal-LM and
image-text-to-text mappings (plus a few encoder-decoder ones, which must be refused), and
:func:`build_matrix_model` builds one from its config class with tiny sizes, a ChatML tokenizer
(:mod:`steerlib.testing.tiny_tokenizer`) and no download. The built-in families come from
:func:`steerlib.testing.build_tiny`; a few vision-language families steerlib has no row for have a
recipe here (Qwen3-VL, whose vision tower sits at ``model.visual``). Everything else that cannot
be built is skipped with the reason (:class:`MatrixSkip`).

:func:`check_family` loads a model with :class:`~steerlib.engine.SteerableModel` (registered row or
the fallback) and checks it against raw PyTorch forward hooks and HF ``hidden_states``; each check
is ``pass``, ``refused: ...`` (a :class:`~steerlib.errors.SteerlibError` naming why) or ``FAIL``
(silently wrong). ``scripts/family_matrix.py`` writes the table in ``docs/family-matrix.md``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers as tf
from torch import Tensor, nn
from transformers.models.auto import configuration_auto, modeling_auto

from ..adapters import BUILTIN_ADAPTERS, AdapterRegistry
from ..errors import SteerlibError
from . import tiny_templates as templates
from .tiny import FAMILIES, TinyModel, build_tiny, tiny_image
from .tiny_tokenizer import make_tokenizer

__all__ = ["CHECKS", "MatrixRow", "MatrixSkip", "build_matrix_model", "check_family", "matrix_families"]

#: Encoder-decoder families tried on purpose: the engine must refuse them at load.
ENCODER_DECODER_TYPES: tuple[str, ...] = ("t5", "bart", "mt5", "pegasus", "marian")
_MAX_PARAMS = 5_000_000  # a config whose defaults this shrinking misses would build a huge model
_SIZES: dict[str, Any] = dict(
    hidden_size=64, n_embd=64, d_model=64, num_hidden_layers=3, n_layer=3, num_layers=3, n_layers=3,
    num_attention_heads=4, n_head=4, num_heads=4, num_key_value_heads=2, intermediate_size=128, n_inner=128,
    ffn_dim=128, d_ff=128, d_kv=16, max_position_embeddings=512, n_positions=512, head_dim=16, num_experts=4,
    num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
    shared_expert_intermediate_size=32, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
    v_head_dim=16, encoder_layers=2, decoder_layers=3, encoder_ffn_dim=128, decoder_ffn_dim=128,
    encoder_attention_heads=4, decoder_attention_heads=4, num_decoder_layers=3,
)
_BUILTIN_TYPES = {mt: a.family for a in BUILTIN_ADAPTERS for mt in a.model_types}


class MatrixSkip(Exception):
    """A family the matrix cannot build offline; the message is the recorded reason."""


@dataclass
class MatrixRow:
    """One family's result: how its adapter was found and every check's outcome."""

    model_type: str
    model_class: str = ""
    kind: str = "text"  # text / vlm / encoder-decoder
    found: str = ""  # registered / fallback / refused / skipped
    path: str = ""
    reason: str = ""
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def silently_wrong(self) -> list[str]:
        return [k for k, v in self.checks.items() if v.startswith("FAIL")]


def matrix_families() -> tuple[str, ...]:
    """Every model type the matrix tries: the causal-LM and image-text-to-text mappings of the
    installed transformers, the built-in families' types and a few encoder-decoder ones."""
    names = set(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(
        modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    names |= set(_BUILTIN_TYPES) | set(ENCODER_DECODER_TYPES)
    return tuple(sorted(names))


def _text_tokenizer() -> Any:
    return make_tokenizer(bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|pad|>",
                          other_special_tokens=("<|im_start|>",), chat_template=templates.QWEN2)


def _config_kwargs(config_cls: type, tok: Any) -> dict[str, Any]:
    params = inspect.signature(config_cls.__init__).parameters
    kw = {k: v for k, v in _SIZES.items() if k in params}
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.bos_token_id)
    kw |= {k: v for k, v in ids.items() if k in params}
    return kw


def _finish(model: nn.Module, tok: Any) -> nn.Module:
    model.float().eval()
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
        gen.do_sample = False
    return model


def _generic(model_type: str) -> TinyModel:
    """A causal LM (or encoder-decoder) built from its config class with tiny sizes."""
    cls_name = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if model_type in ENCODER_DECODER_TYPES or cls_name is None:
        cls_name = modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.get(model_type, cls_name)
    if cls_name is None:
        raise MatrixSkip("no tiny recipe for this vision-language family's processor (steerlib.testing.matrix)")
    model_cls = getattr(tf, cls_name, None)
    if model_cls is None:
        raise MatrixSkip(f"transformers has no class {cls_name}")
    tok = _text_tokenizer()
    try:
        config_cls = configuration_auto.CONFIG_MAPPING[model_type]
        config = config_cls(**_config_kwargs(config_cls, tok))
        with torch.device("meta"):
            n = sum(p.numel() for p in model_cls(config).parameters())
    except Exception as e:  # the config refuses tiny sizes, or needs timm / other packages
        raise MatrixSkip(f"cannot build a tiny config offline: {type(e).__name__}: {_short(e)}") from e
    if n > _MAX_PARAMS:
        raise MatrixSkip(f"the generic tiny config still has {n / 1e6:.0f}M parameters (sizes this recipe cannot shrink)")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _finish(model_cls(config), tok)
        ids = torch.tensor([tok("Hello there, what is this about today?", add_special_tokens=False)["input_ids"]] * 2)
        mask = torch.ones_like(ids)
        mask[0, :3] = 0
        kw: dict[str, Any] = {"decoder_input_ids": ids} if getattr(config, "is_encoder_decoder", False) else {}
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, **kw)
    except Exception as e:
        raise MatrixSkip(f"the tiny model does not run a plain forward: {type(e).__name__}: {_short(e)}") from e
    return TinyModel(family=model_type, model=model, processor=tok, tokenizer=tok, is_vlm=False)


def _qwen3_vl() -> TinyModel:
    """Qwen3-VL: the vision tower sits at ``model.visual`` (not a top-level child), with DeepStack."""
    from .tiny import _without_video  # the processor without its video processor (no torchvision)

    tok = make_tokenizer(
        bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        named_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                      "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
        other_special_tokens=("<|im_start|>",), chat_template=templates.QWEN2_VL)
    image_processor = tf.Qwen2VLImageProcessorPil(size={"shortest_edge": 256, "longest_edge": 4096}, patch_size=8,
                                                  merge_size=2)
    proc = _without_video("Qwen3VLProcessor")(image_processor=image_processor, tokenizer=tok,
                                              chat_template=templates.QWEN2_VL)
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16, deepstack_visual_indexes=[1])
    config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=tok.image_token_id,
                              video_token_id=tok.video_token_id, vision_start_token_id=tok.vision_start_token_id,
                              vision_end_token_id=tok.vision_end_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _finish(tf.Qwen3VLForConditionalGeneration(config), tok)
    return TinyModel(family="qwen3_vl", model=model, processor=proc, tokenizer=tok, is_vlm=True)


def _vipllava() -> TinyModel:
    """VipLLaVA: LLaVA's layout with multi-layer vision features; served by the fallback."""
    from .tiny import _IMAGE, _PATCH, _VISION, _text_kwargs

    tok = make_tokenizer(bos_token="<s>", eos_token="</s>", pad_token="<pad>", named_tokens={"image_token": "<image>"},
                         chat_template=templates.LLAVA)
    proc = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessorPil(size={"shortest_edge": _IMAGE},
                                                 crop_size={"height": _IMAGE, "width": _IMAGE}),
        tokenizer=tok, patch_size=_PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=templates.LLAVA)
    vision = tf.CLIPVisionConfig(**(_VISION | {"num_hidden_layers": 3}), image_size=_IMAGE, patch_size=_PATCH,
                                 projection_dim=32)
    config = tf.VipLlavaConfig(vision_config=vision, text_config=tf.LlamaConfig(**_text_kwargs(tok)),
                               image_token_index=tok.image_token_id, vision_feature_layers=[-2, -1],
                               image_seq_length=(_IMAGE // _PATCH) ** 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _finish(tf.VipLlavaForConditionalGeneration(config), tok)
    return TinyModel(family="vipllava", model=model, processor=proc, tokenizer=tok, is_vlm=True)


def _mistral3() -> TinyModel:
    """Mistral 3 (Pixtral vision): its processor needs torchvision, so this records that reason."""
    from .tiny import _text_kwargs

    template = templates._chatml("[IMG]", None)
    tok = make_tokenizer(bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                         named_tokens={"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
                                       "image_end_token": "[IMG_END]"},
                         other_special_tokens=("<|im_start|>", "<|im_end|>"), chat_template=template)
    proc = tf.PixtralProcessor(image_processor=tf.PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=8),
                               tokenizer=tok, patch_size=8, spatial_merge_size=2, image_token="[IMG]",
                               image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]", chat_template=template)
    vision = tf.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    head_dim=16, image_size=32, patch_size=8)
    config = tf.Mistral3Config(vision_config=vision, text_config=tf.MistralConfig(**_text_kwargs(tok), head_dim=16),
                               image_token_index=tok.image_token_id, spatial_merge_size=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _finish(tf.Mistral3ForConditionalGeneration(config), tok)
    return TinyModel(family="mistral3", model=model, processor=proc, tokenizer=tok, is_vlm=True)


_RECIPES: dict[str, Callable[[], TinyModel]] = {"qwen3_vl": _qwen3_vl, "vipllava": _vipllava, "mistral3": _mistral3}


def build_matrix_model(model_type: str) -> TinyModel:
    """The tiny model of ``model_type``; raises :class:`MatrixSkip` with the reason when it cannot be built."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model_type in _BUILTIN_TYPES and _BUILTIN_TYPES[model_type] in FAMILIES:
            fam = _BUILTIN_TYPES[model_type]
            if model_type == fam:
                return build_tiny(fam)
        if model_type in _RECIPES:
            try:
                return _RECIPES[model_type]()
            except Exception as e:
                raise MatrixSkip(f"recipe failed: {type(e).__name__}: {_short(e)}") from e
        return _generic(model_type)


def _short(e: BaseException, n: int = 140) -> str:
    return " ".join(str(e).split())[:n]


# --------------------------------------------------------------------- references ----
def _hook_generate(model: nn.Module, layer: nn.Module, inputs: dict[str, Tensor], v: Tensor, alpha: float,
                   mask: Tensor, steer_decode: bool, n: int, pad: int | None) -> Any:
    """Greedy generate with a raw forward hook adding ``alpha * v_row`` on ``mask`` (prefill) and on
    every decode step when ``steer_decode``; independent of the engine."""
    S = inputs["input_ids"].shape[1]

    def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
        h = out[0] if isinstance(out, tuple) else out
        if h.shape[1] == S:
            h = h + alpha * mask[..., None].to(h.dtype) * v[:, None, :]
        elif steer_decode:
            h = h + alpha * v[:, None, :]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=n, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, pad_token_id=pad)
    finally:
        handle.remove()


def _image_token_id(tm: TinyModel) -> int | None:
    """The image token id as the processor defines it (independent of the adapter's config lookup)."""
    # the token the processor repeats per image patch: the tokenizer's image token (Gemma3's processor
    # calls its begin-of-image marker image_token_id), InternVL's context token, else the processor's
    for owner, attr in ((tm.tokenizer, "image_token_id"), (tm.tokenizer, "context_image_token_id"),
                        (tm.processor, "image_token_id")):
        v = getattr(owner, attr, None)
        if isinstance(v, int):
            return v
    return None


def _diff(a: list[Tensor], b: list[Tensor]) -> float:
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        both_inf = torch.isinf(x) & torch.isinf(y) & (torch.sign(x) == torch.sign(y))
        worst = max(worst, float((x.float() - y.float()).abs().masked_fill(both_inf, 0.0).max()))
    return worst


#: The checks run on every accepted family, in table order.
CHECKS: tuple[str, ...] = ("steer_b1", "steer_b2", "batch_invariance", "read", "image_mask", "image_generate")
_PROMPTS = ["Describe the picture.", "What colour is the thing in this image, and why is it there?"]
_LAYER, _ALPHA, _N = 1, 1.5, 3
_TOL = 1e-4


def _outcome(fn: Callable[[], bool | str | None]) -> str:
    try:
        ok = fn()
    except SteerlibError as e:
        return f"refused: {type(e).__name__}: {_short(e, 90)}"
    except Exception as e:  # a raw error is not a refusal: steerlib should have named the problem
        return f"FAIL: raw {type(e).__name__}: {_short(e, 90)}"
    if isinstance(ok, str):
        return ok
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def check_family(model_type: str, *, checks: tuple[str, ...] | None = None) -> MatrixRow:
    """Build ``model_type``, load it with :class:`~steerlib.engine.SteerableModel` and run the checks."""
    from ..engine import SteerableModel
    from ..intervention import Intervention

    row = MatrixRow(model_type=model_type)
    try:
        tm = build_matrix_model(model_type)
    except MatrixSkip as e:
        row.found, row.reason = "skipped", str(e)
        row.kind = "vlm" if model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES else "text"
        return row
    model = tm.model
    row.model_class = type(model).__name__
    row.kind = "encoder-decoder" if getattr(model.config, "is_encoder_decoder", False) else (
        "vlm" if tm.is_vlm else "text")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the built-in table only: a family some other code registered still counts as "fallback" here
            sm = SteerableModel(model, tm.processor, registry=AdapterRegistry(BUILTIN_ADAPTERS))
    except SteerlibError as e:
        row.found, row.reason = "refused", f"{type(e).__name__}: {_short(e, 400)}"
        return row
    except Exception as e:
        row.found, row.reason = "refused", f"FAIL: raw {type(e).__name__}: {_short(e, 160)}"
        row.checks["load"] = "FAIL: raw error at load"
        return row
    row.found = "fallback" if sm.adapter.extra.get("fallback") else "registered"
    row.path = sm.adapter.layers_path
    layer_mod = sm.adapter.layers(model)[_LAYER]
    pad = sm.tokenizer.pad_token_id if sm.tokenizer.pad_token_id is not None else sm.tokenizer.eos_token_id
    images = [[tiny_image(1)], [tiny_image(2)]] if sm.adapter.is_vlm else None
    g = torch.Generator().manual_seed(0)
    V = 2.0 * torch.randn(2, sm.hidden_size, generator=g)
    wanted = checks or CHECKS

    def steer(n: int) -> bool:
        b = sm.encode(_PROMPTS[:n], images[:n] if images else None)
        got = sm.generate(b, Intervention.build(_LAYER, V[:n], alpha=_ALPHA), max_new_tokens=_N, output_logits=True)
        ref = _hook_generate(model, layer_mod, dict(b.inputs), V[:n], _ALPHA, b.attention_mask.bool(), True, _N, pad)
        plain = sm.generate(b, None, max_new_tokens=_N, output_logits=True)
        moved = _diff(plain.logits[:1], got.logits[:1]) > 1e-3
        return bool(torch.equal(got.sequences, ref.sequences.cpu())) and _diff(got.logits, list(ref.logits)) <= _TOL and moved

    def invariance() -> bool:
        b = sm.encode(_PROMPTS, images)
        both = sm.generate(b, Intervention.build(_LAYER, V, alpha=_ALPHA), max_new_tokens=_N, output_logits=True)
        for i in range(2):
            bi = sm.encode(_PROMPTS[i:i + 1], images[i:i + 1] if images else None)
            alone = sm.generate(bi, Intervention.build(_LAYER, V[i:i + 1], alpha=_ALPHA), max_new_tokens=_N,
                                output_logits=True)
            k = alone.new_tokens.shape[1]  # the row alone may stop early at EOS; the batch pads it after that
            if not torch.equal(alone.new_tokens[0], both.new_tokens[i, :k]):
                return False
            if _diff([x[0:1] for x in alone.logits], [x[i:i + 1] for x in both.logits[:k]]) > _TOL:
                return False
        return True

    def read() -> bool | str | None:
        b = sm.encode(_PROMPTS[:1], images[:1] if images else None)
        inputs = sm._model_inputs(b)
        blocks = sm.adapter.layers(model)
        seen: dict[int, Tensor] = {}
        def keep(i: int) -> Callable[..., None]:
            def hook(_m: nn.Module, _i: Any, o: Any) -> None:
                seen.setdefault(i, (o[0] if isinstance(o, tuple) else o).detach().float().cpu())
            return hook

        hooks = [blk.register_forward_hook(keep(i)) for i, blk in enumerate(blocks)]
        try:
            with torch.no_grad():
                hs = model(**inputs, output_hidden_states=True).hidden_states
        finally:
            for h in hooks:
                h.remove()
        if not hs:
            return None
        # which HF entry is block 0's output: hidden_states[1] when HF lists the embeddings first,
        # hidden_states[0] when it does not (Mamba); raw hooks on the blocks decide, not the engine
        offset = next((k for k in (1, 0) if k < len(hs) and hs[k].shape == seen[0].shape
                       and float((hs[k].float().cpu() - seen[0]).abs().max()) <= _TOL), None)
        if offset is None:
            return False
        layers = [i for i in range(sm.num_layers - 1) if i + offset < len(hs)]
        got = sm.read(b, layers, reduce="per_token")
        ok = all(float((got[i] - hs[i + offset].float().cpu()).abs().max()) <= _TOL for i in layers)
        return f"pass (hidden_states[i + {offset}])" if ok else False

    def image_mask() -> bool | None:
        if not sm.adapter.is_vlm:
            return None
        b = sm.encode(_PROMPTS, images)
        tid = _image_token_id(tm)
        if tid is None:
            return False
        return bool(torch.equal(b.image_mask, b.input_ids == tid)) and bool(b.image_mask.any())

    def image_generate() -> bool | None:
        if not sm.adapter.is_vlm:
            return None
        b = sm.encode(_PROMPTS, images)
        tid = _image_token_id(tm)
        mask = (b.input_ids == tid) & b.attention_mask.bool()
        got = sm.generate(b, Intervention.build(_LAYER, V, alpha=_ALPHA, positions="image"), max_new_tokens=_N,
                          output_logits=True)
        ref = _hook_generate(model, layer_mod, dict(b.inputs), V, _ALPHA, mask, False, _N, pad)
        return bool(torch.equal(got.sequences, ref.sequences.cpu())) and _diff(got.logits, list(ref.logits)) <= _TOL

    fns: dict[str, Callable[[], bool | str | None]] = {"steer_b1": lambda: steer(1), "steer_b2": lambda: steer(2),
                                                 "batch_invariance": invariance, "read": read,
                                                 "image_mask": image_mask, "image_generate": image_generate}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in wanted:
            row.checks[name] = _outcome(fns[name])
    return row
