"""Steer the user's own calls of a plain Hugging Face model: ``steerer.attach`` / ``steerer.attached``.

``with steerer.attached(model, tokenizer, alpha=0.5):`` makes every call of ``model`` inside the
block steered: ``model.generate``, ``model(...)``, ``pipeline("text-generation", model=model)``,
a ``TextStreamer``, an evaluation harness's loop. ``handle = steerer.attach(...)`` does the same
until ``handle.remove()``.

How it works: one forward pre-hook on the model sees each call's inputs; one forward hook per
decoder layer does that layer's work with the engine's own per-layer edit
(:func:`steerlib.engine._edit`, the arithmetic of the ``hooks`` backend, tested equal to the
nnsight trace). A call without a cache, or with an empty one, is a *prompt pass* (``generate``'s
prefill, or a plain forward): the pre-hook builds a :class:`~steerlib.encoding.Batch` from its
``input_ids`` and ``attention_mask`` and asks the steerer, through the protocol
(:meth:`~steerlib.steerers.Steerer.intervention`), how to steer that batch. A call with a filled
cache is a *decode step* of the same sequences: each row keeps the vector of its prompt pass
(L2S's ``g`` is computed once, on the prefill, from the input layer's state at the input position).

Refused (an error naming the fix) rather than steered wrong: right padding; a padded batch on a
model that ignores the attention mask; a decode step whose batch size differs from its prompt
pass, or that brings more than one new token per row (assisted decoding, chunked prefill); a
decode step with no prompt pass seen; ``inputs_embeds`` without ``input_ids``; a steerer that
edits the prompt text (the Prompt baseline: the hooks never see text); a second steerer attached
to the same model. Beam search and ``num_return_sequences`` are exact: ``generate`` expands the
rows before the prefill, so each beam gets the vector of its own (identical) prompt, and beams
are only reordered among the rows of one prompt.

The model is never changed: the hooks are the only thing added, and they are removed by
``handle.remove()`` or at the end of the ``with`` block, also when the block raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .data.items import ContrastiveItem
from .encoding import Batch
from .engine import SteerableModel, _edit, _hidden, _replace
from .errors import InputError, PositionError, UnsupportedModelError
from .intervention import Intervention
from .positions import Where, as_positions

__all__ = ["AttachHandle", "SteererLike", "attach", "attached"]


class SteererLike(Protocol):
    """What attach asks of a steerer (the :class:`steerlib.steerers.Steerer` protocol's part it uses)."""

    method: str
    alpha: float
    positions: Where

    def check_model(self, model: SteerableModel) -> None: ...

    def prepare_prompts(self, items: list[ContrastiveItem]) -> list[ContrastiveItem]: ...

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None) -> Intervention | None: ...


_MARK = "_steerlib_attach"
_SKIP_KEYS = ("cache", "past_key_values", "use_cache", "position_ids", "cache_position", "logits_to_keep",
              "return_dict", "output_attentions", "output_hidden_states", "labels", "inputs_embeds")


@dataclass
class _Pass:
    """What the current sequences' prompt pass decided: the batch, the intervention, the layers."""

    batch: Batch
    iv: Intervention | None
    order: frozenset[int]
    memo: dict[str, Tensor] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)


class AttachHandle:
    """Hooks that steer every call of one model; returned by :meth:`Steerer.attach`.

    Attributes:
        steerer: the steerer asked at every prompt pass.
        model: the :class:`~steerlib.engine.SteerableModel` view of the hooked model.
        alpha: the strength (None: the steerer's own); a change applies from the next prompt pass.
        positions: where to steer (None: the steerer's own); a change applies from the next prompt pass.
        enabled: False leaves the model unsteered from the next prompt pass on (the hooks stay).
    """

    def __init__(self, steerer: SteererLike, model: SteerableModel, *, alpha: float | None = None,
                 positions: Where | None = None) -> None:
        self.steerer = steerer
        self.model = model
        self.alpha = alpha
        self.positions = positions
        self.enabled = True
        self._pass: _Pass | None = None
        self._busy = False
        self._handles: list[Any] = []
        self._gen_suffix = _generation_suffix(model)
        hf = model.model
        self._handles.append(hf.register_forward_pre_hook(_marked(self._pre_hook), with_kwargs=True))
        try:
            for i, layer in enumerate(model.adapter.layers(hf)):
                self._handles.append(layer.register_forward_hook(self._layer_hook(i)))
        except BaseException:
            self.remove()
            raise

    # ------------------------------------------------------------------ public ------
    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook (idempotent); the model is then exactly as before :meth:`Steerer.attach`."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()
        self._pass = None

    def __enter__(self) -> "AttachHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (f"AttachHandle({self.steerer.method}, {type(self.model.model).__name__}, alpha={self.alpha}, "
                f"positions={self.positions}, enabled={self.enabled}, {state})")

    # ------------------------------------------------------------------ hooks -------
    def _pre_hook(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._busy:  # a read the steerer itself runs while deciding (nested forward)
            return None
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
        if ids is None:
            raise InputError("An attached model was called without input_ids (inputs_embeds only); steerlib needs "
                             "the token ids to find positions. Call it with input_ids, or detach the steerer.")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = _cache_length(cache)
        if past == 0:
            self._pass = self._prompt_pass(ids, kwargs)
            return None
        p = self._pass
        if p is None:
            raise InputError("An attached model was given a filled cache, but its prompt pass ran before the steerer "
                             "was attached; attach the steerer before generation starts.")
        if ids.shape[0] != p.batch.size:
            raise UnsupportedModelError(
                f"A decode step has {ids.shape[0]} rows but its prompt pass had {p.batch.size}: rows were added or "
                "dropped, so per-row steering vectors cannot follow them. Keep the batch fixed during generation.")
        if ids.shape[1] != 1:
            raise UnsupportedModelError(
                f"A decode step brought {ids.shape[1]} new tokens per row; attach steers one new token per step after "
                "the prompt pass (assisted/speculative decoding and chunked prefill are not supported). Use plain "
                "greedy, sampling or beam search.")
        return None

    def _layer_hook(self, layer: int) -> Any:
        def edit(_m: nn.Module, _inp: Any, out: Any) -> Any:
            p = self._pass
            if self._busy or p is None or layer not in p.order:
                return None
            step = p.calls.get(layer, 0)
            p.calls[layer] = step + 1
            h = _edit(step, layer, _hidden(out), p.iv, p.batch, None, p.memo)
            return None if h is None else _replace(out, h)
        return edit

    # ------------------------------------------------------------------ prompt pass -
    def _prompt_pass(self, ids: Tensor, kwargs: dict[str, Any]) -> _Pass:
        sm = self.model
        am = kwargs.get("attention_mask")
        am = torch.ones_like(ids) if am is None else am
        if am.dim() != 2 or am.shape != ids.shape:
            raise UnsupportedModelError(f"The attention mask has shape {tuple(am.shape)} for input_ids "
                                        f"{tuple(ids.shape)}; attach needs a 2-d [batch, seq] padding mask.")
        am = am.long()
        if bool((am.cummax(dim=1).values != am).any()):
            raise InputError("A right-padded batch reached the attached model: steerlib steers left-padded batches "
                             "only (the prompt must end at the last column). Set tokenizer.padding_side = 'left' "
                             "(a pipeline: pipeline(..., tokenizer=tok) with tok.padding_side = 'left').")
        inputs: dict[str, Tensor] = {"input_ids": ids, "attention_mask": am}
        for k, v in kwargs.items():
            if isinstance(v, Tensor) and k not in inputs and k not in _SKIP_KEYS:
                inputs[k] = v  # pixel values etc., for a read the steerer may run on this batch
        cpu_ids = ids.detach().cpu()
        if sm.image_token_ids:
            image_mask = torch.isin(cpu_ids, torch.tensor(sm.image_token_ids))
        else:
            image_mask = torch.zeros_like(cpu_ids, dtype=torch.bool)
        n = int(ids.shape[0])
        zeros = torch.zeros(n, dtype=torch.long)
        batch = Batch(inputs=inputs, image_mask=image_mask, completion_len=zeros, trailer_len=zeros.clone(),
                      gen_prompt_len=self._gen_prompt_len(cpu_ids), texts=[])
        sm._model_inputs(batch)  # refuses a padded batch on a model that ignores the attention mask
        if not self.enabled:
            return _Pass(batch=batch, iv=None, order=frozenset())
        self._busy = True
        try:
            items = [ContrastiveItem(prompt=t) for t in sm.tokenizer.batch_decode(cpu_ids, skip_special_tokens=False)]
            iv = self.steerer.intervention(sm, items, batch, alpha=self.alpha, positions=self.positions)
            iv = sm._prepare(batch, iv)
            if iv is not None and iv.predictor is not None and iv.source_position == "last_prompt_no_gen" \
                    and bool((batch.gen_prompt_len < 0).any()):
                raise PositionError(
                    "This steerer reads its input before the chat template's generation prompt "
                    "(input_position='last_prompt_no_gen'), but a row does not end with that generation prompt "
                    f"({self._gen_suffix!r} token ids). Render prompts with tokenizer.apply_chat_template(..., "
                    "add_generation_prompt=True) (a pipeline does, for chat messages).")
            with torch.no_grad():
                iv, plan = sm._planned(batch, iv)  # L2S reading above its steered layer: one extra prefill
        finally:
            self._busy = False
        return _Pass(batch=batch, iv=iv, order=frozenset(plan.order))

    def _gen_prompt_len(self, ids: Tensor) -> Tensor:
        """Per row: the generation prompt's length when the row ends with it, else -1."""
        suf = self._gen_suffix
        out = torch.full((ids.shape[0],), -1, dtype=torch.long)
        if suf:
            k = len(suf)
            tail = torch.tensor(suf)
            for i in range(ids.shape[0]):
                if ids.shape[1] >= k and torch.equal(ids[i, -k:], tail):
                    out[i] = k
        return out


def _marked(fn: Any) -> Any:
    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        return fn(module, args, kwargs)
    setattr(pre, _MARK, True)
    return pre


def _cache_length(cache: Any) -> int:
    """Tokens already in a cache (0: none, or an empty one: this call is a prompt pass)."""
    if cache is None:
        return 0
    get = getattr(cache, "get_seq_length", None)
    if callable(get):
        return int(get())
    if isinstance(cache, (tuple, list)):  # the legacy tuple-of-tuples format
        return 0 if not cache else int(cache[0][0].shape[-2])
    raise UnsupportedModelError(f"The attached model was given a cache of type {type(cache).__name__}, which steerlib "
                                "cannot measure; use transformers' Cache classes (the default in generate).")


def _generation_suffix(sm: SteerableModel) -> tuple[int, ...]:
    """The token ids the chat template's generation prompt appends (e.g. ``<|im_start|>assistant\\n``),
    or () when the template's prompt without it is not a prefix of the prompt with it."""
    try:
        n = 1 if sm.adapter.is_vlm and sm.image_token_ids else 0
        base = sm.adapter.render(sm.processor, "x", n, system=sm.system_prompt, add_generation_prompt=True)
        bare = sm.adapter.render(sm.processor, "x", n, system=sm.system_prompt, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 - a template that cannot render: no suffix, last_prompt_no_gen refused
        return ()
    if not base.startswith(bare) or base == bare:
        return ()
    tok = sm.tokenizer
    full = tok(base, add_special_tokens=False)["input_ids"]
    head = tok(bare, add_special_tokens=False)["input_ids"]
    if full[:len(head)] != head:
        return ()
    return tuple(int(i) for i in full[len(head):])


def _steerable(model: Any, processor: Any) -> SteerableModel:
    if isinstance(model, SteerableModel):
        if processor is not None and processor is not model.processor:
            raise InputError("A SteerableModel carries its own processor; do not pass another one to attach.")
        return model
    if not isinstance(model, nn.Module):
        raise InputError(f"attach takes a Hugging Face model (or a SteerableModel), got {type(model).__name__}.")
    if processor is None:
        name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
        processor = _load_processor(name)
    return SteerableModel(model, processor, backend="hooks")


def _load_processor(name: str) -> Any:
    if name:
        from transformers import AutoProcessor, AutoTokenizer

        for loader in (AutoProcessor, AutoTokenizer):
            with contextlib.suppress(Exception):
                return loader.from_pretrained(name)
    raise InputError("attach needs the model's tokenizer (text models) or processor (VLMs): "
                     "steerer.attach(model, tokenizer, alpha=...). It could not be loaded from the model's "
                     f"name_or_path {name!r}.")


def attach(steerer: SteererLike, model: Any, processor: Any = None, *, alpha: float | None = None,
           positions: Where | None = None) -> AttachHandle:
    """Steer every later call of ``model`` with ``steerer`` until ``handle.remove()``.

    Args:
        steerer: a fitted steerer (any method that steers through an intervention).
        model: the plain Hugging Face model (or a :class:`~steerlib.engine.SteerableModel`).
        processor: its tokenizer (text models) or processor (VLMs); loaded from the model's
            ``name_or_path`` when omitted.
        alpha: the strength (default: the steerer's).
        positions: where to steer, a :data:`~steerlib.positions.Where` (default: the steerer's).

    Returns:
        An :class:`AttachHandle` (also a context manager).

    Raises:
        InputError: the steerer edits prompt text (it cannot act through hooks), or another
            steerer is attached to this model already.
        CompatibilityError / NotFittedError: the steerer does not fit this model / is not fitted.
    """
    hf = model.model if isinstance(model, SteerableModel) else model
    if any(getattr(h, _MARK, False) for h in getattr(hf, "_forward_pre_hooks", {}).values()):
        raise InputError(f"A steerer is already attached to this {type(hf).__name__}; remove its handle first "
                         "(handle.remove()), or attach one combined steerer (a + b).")
    sm = _steerable(model, processor)
    steerer.check_model(sm)
    if positions is not None:
        as_positions(positions)
    probe = [ContrastiveItem(prompt="attach probe")]
    if steerer.prepare_prompts(list(probe)) != probe:
        raise InputError(f"The {steerer.method!r} steerer edits the prompt text, which hooks on the model never see; "
                         "use steerer.generate(model, prompts), or edit your prompts yourself.")
    return AttachHandle(steerer, sm, alpha=alpha, positions=positions)


@contextlib.contextmanager
def attached(steerer: SteererLike, model: Any, processor: Any = None, *, alpha: float | None = None,
             positions: Where | None = None) -> Iterator[AttachHandle]:
    """``with attached(steerer, model, tok, alpha=0.5) as handle:``: :func:`attach` for the block;
    the hooks are removed when it ends, also when it raises."""
    handle = attach(steerer, model, processor, alpha=alpha, positions=positions)
    try:
        yield handle
    finally:
        handle.remove()
