"""The fallback finder: search, rank and describe the candidate decoder stacks of an unknown model.

For a ``config.model_type`` with no registered :class:`~steerlib.adapters.base.Adapter`, steerlib
looks for the language decoder itself:

1. **search**: every ``nn.ModuleList`` at any depth whose name is a common block-list name
   (``layers``, ``h``, ``blocks``, ``block``, ``layer``, ...) or whose items are ``*Layer`` /
   ``*Block`` modules;
2. **reject** the stacks that are not the language decoder by their path (vision towers,
   perceiver resamplers, Q-Formers, projectors, VQ image tokenizers, audio and text *encoders*),
   each with its reason;
3. **rank** the rest: a stack inside the module ``model.get_decoder()`` returns (the one whose
   output feeds the LM head) first, then a stack whose length is the text config's
   ``num_hidden_layers``, then the larger and the shallower one.

The engine (:class:`steerlib.engine.SteerableModel`) then validates the candidates in that order
with a probe forward and takes the first that passes; its error names every candidate it
rejected and why. Whether the model takes images is decided separately (:func:`detect_vlm`),
from the config (``vision_config``, image token ids), the processor (an image processor) and
modules at any depth, never from the top-level children alone.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from .base import Adapter, text_config

__all__ = ["Candidate", "Search", "auto_adapter", "detect_vlm", "is_encoder_decoder", "search_stacks"]

#: ``ModuleList`` names that hold decoder blocks in Hugging Face models.
LIST_NAMES: tuple[str, ...] = ("layers", "h", "blocks", "block", "layer", "decoder_layers", "transformer_blocks")
#: Path parts that mark a stack as *not* the language decoder (matched inside each dotted part).
NOT_DECODER: tuple[tuple[str, str], ...] = (
    ("vision", "a vision tower"), ("visual", "a vision tower"), ("vit", "a vision tower"),
    ("image", "an image module"), ("img", "an image module"), ("vq", "a VQ image tokenizer"),
    ("perceiver", "a perceiver resampler"), ("resampler", "a perceiver resampler"),
    ("qformer", "a Q-Former"), ("q_former", "a Q-Former"), ("projector", "a projector"),
    ("connector", "a connector"), ("audio", "an audio encoder"), ("speech", "an audio encoder"),
    ("encoder", "an encoder stack"),
)
_VISION_MODULE = re.compile(r"(^|[._])(vision|visual|vqmodel|vq_model|vqvae|image_tower|vision_tower|vit)([._]|$)")
_BLOCK_CLASS = re.compile(r"(Layer|Block)$")


@dataclass(frozen=True)
class Candidate:
    """One ``ModuleList`` the finder considered.

    Attributes:
        path: its dotted path from the top model.
        length: how many blocks it holds.
        classes: the block class names, sorted.
        rejected: why it can never be the language decoder (``""`` for a ranked candidate).
        in_decoder: it sits inside ``model.get_decoder()``.
        length_matches: its length equals the text config's ``num_hidden_layers``.
    """

    path: str
    length: int
    classes: tuple[str, ...]
    rejected: str = ""
    in_decoder: bool = False
    length_matches: bool = False

    def describe(self) -> str:
        what = f"{self.path!r} ({self.length} x {'/'.join(self.classes)})"
        return f"{what}: {self.rejected}" if self.rejected else what


@dataclass(frozen=True)
class Search:
    """The finder's result: ranked candidates (best first) and the stacks rejected by their path."""

    ranked: tuple[Candidate, ...]
    rejected: tuple[Candidate, ...]

    def report(self) -> str:
        """The candidates and rejections, one a line (for error messages)."""
        lines = [f"  candidate {i + 1}: {c.describe()}" for i, c in enumerate(self.ranked)]
        lines += [f"  rejected: {c.describe()}" for c in self.rejected]
        return "\n".join(lines) if lines else "  (no nn.ModuleList of blocks anywhere in the model)"


def is_encoder_decoder(model: nn.Module) -> bool:
    """The model (or its text config) is an encoder-decoder (T5, BART, Whisper, Florence-2, ...)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return False
    return bool(getattr(cfg, "is_encoder_decoder", False) or getattr(text_config(cfg), "is_encoder_decoder", False))


def _layer_count(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    try:
        cfg = text_config(cfg)
    except Exception:  # a config without text sub-config support
        pass
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _decoder_path(model: nn.Module, names: dict[int, str]) -> str | None:
    get = getattr(model, "get_decoder", None)
    if not callable(get):
        return None
    try:
        dec = get()
    except Exception:  # not every model implements it
        return None
    if not isinstance(dec, nn.Module) or dec is model:
        return None
    return names.get(id(dec))


def _rejection(path: str) -> str:
    for part in path.lower().split("."):
        for token, what in NOT_DECODER:
            if token in part:
                return f"{what} by its path (part {part!r})"
    return ""


def search_stacks(model: nn.Module) -> Search:
    """Every candidate decoder stack of ``model``, ranked (see the module docstring)."""
    names = {id(m): n for n, m in model.named_modules()}
    dec = _decoder_path(model, names)
    want = _layer_count(model)
    ranked: list[tuple[tuple[Any, ...], Candidate]] = []
    rejected: list[Candidate] = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        classes = tuple(sorted({type(b).__name__ for b in mod}))
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in LIST_NAMES and not all(_BLOCK_CLASS.search(c) for c in classes):
            continue
        if all(not any(True for _ in b.children()) for b in mod):  # plain Linear/Embedding lists
            continue
        in_dec = dec is not None and (dec == "" or name == dec or name.startswith(dec + "."))
        cand = Candidate(path=name, length=len(mod), classes=classes, in_decoder=in_dec,
                         length_matches=want is not None and len(mod) == want)
        why = _rejection(name[len(dec) + 1:] if in_dec and dec else name)
        if why:
            rejected.append(Candidate(**{**cand.__dict__, "rejected": why}))
            continue
        size = sum(p.numel() for p in mod.parameters())
        key = (not cand.in_decoder, not cand.length_matches, -size, name.count("."), name)
        ranked.append((key, cand))
    ranked.sort(key=lambda kc: kc[0])
    return Search(ranked=tuple(c for _, c in ranked), rejected=tuple(rejected))


def detect_vlm(model: nn.Module, processor: Any = None) -> tuple[str, ...]:
    """The evidence that ``model`` takes images (empty for a text-only model).

    Looks at the config (a ``vision_config``, image token ids), the processor (an image
    processor) and the module names at any depth (``model.visual``, a VQ image model, ...).
    """
    evidence: list[str] = []
    cfg = getattr(model, "config", None)
    if cfg is not None:
        if getattr(cfg, "vision_config", None) is not None:
            evidence.append("config.vision_config")
        for attr in ("image_token_id", "image_token_index", "vq_config"):
            v = getattr(cfg, attr, None)
            if (isinstance(v, int) and v >= 0) or (attr == "vq_config" and v is not None):
                evidence.append(f"config.{attr}")
    if processor is not None and getattr(processor, "image_processor", None) is not None:
        evidence.append("processor.image_processor")
    for name, _ in model.named_modules():
        if name and _VISION_MODULE.search(name.lower()):
            evidence.append(f"module {name!r}")
            break
    return tuple(evidence)


def accepts_position_ids(model: nn.Module) -> bool:
    """``model.forward`` names a ``position_ids`` parameter."""
    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def auto_adapter(model: nn.Module, cand: Candidate, processor: Any = None) -> Adapter:
    """The adapter the fallback builds for a candidate stack of an unregistered model."""
    mt = str(getattr(getattr(model, "config", None), "model_type", None) or "unknown")
    evidence = detect_vlm(model, processor)
    is_vlm = bool(evidence)
    tok = getattr(processor, "tokenizer", processor)
    placeholder = None
    for owner in (processor, tok):
        v = getattr(owner, "image_token", None)
        if isinstance(v, str) and v:
            placeholder = v
            break
    notes = [f"Found by the fallback: decoder stack {cand.path!r} ({cand.length} x {'/'.join(cand.classes)})."]
    if len(cand.classes) > 1:
        notes.append("Mixed decoder block classes: " + ", ".join(cand.classes) + "; layer i counts all of them.")
    if is_vlm:
        notes.append("Vision-language model (" + ", ".join(evidence) + ").")
    return Adapter(family=f"auto:{mt}", model_types=(mt,), layers_path=cand.path, is_vlm=is_vlm,
                   image_placeholder=placeholder if is_vlm else None,
                   pass_position_ids=(not is_vlm) and accepts_position_ids(model), notes=" ".join(notes),
                   extra={"fallback": True})
