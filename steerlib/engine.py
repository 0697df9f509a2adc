"""The engine: read hidden states and add steering vectors through nnsight.

:class:`SteerableModel` wraps a Hugging Face model, its processor (or tokenizer) and its
adapter. It never mutates the model: interventions exist only inside an nnsight trace (or, with
``backend="hooks"``, inside forward hooks registered for one call and removed after it).
Layer ``i`` is the output of decoder block ``i`` (HF ``hidden_states[i + 1]``).

Every entry point (:meth:`SteerableModel.read`, ``read_many``, ``forward``, ``generate``) asks
one function, :func:`_plan`, which layers its pass visits and whether a predictor needs a pass
of its own first; a backend object then runs the pass, and :func:`_edit` does each layer's work.
Encoding (chat templates, :class:`Batch`) lives in :mod:`steerlib.encoding`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import nnsight
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from .adapters import DEFAULT_REGISTRY, Adapter, AdapterRegistry
from .adapters.base import probe_layer_output, resolve_path
from .data.items import ImageLike
from .encoding import Batch, ChatEncoder
from .errors import AdapterValidationError, InputError, PositionError
from .intervention import Intervention, check_layers
from .positions import READ_REDUCTIONS, TOKEN_POSITIONS, Reduce, as_reduce

__all__ = ["BACKENDS", "READ_REDUCTIONS", "BackendName", "Batch", "Generation", "Plan", "SteerableModel"]

BackendName = Literal["nnsight", "hooks"]
"""How :meth:`SteerableModel.forward` and :meth:`SteerableModel.generate` apply interventions."""
BACKENDS: tuple[BackendName, ...] = get_args(BackendName)
Read = Callable[[int, Tensor], Any]
"""A callback given each visited layer's (steered) state: ``read(layer, h)``."""


@dataclass
class Generation:
    """What :meth:`SteerableModel.generate` returns."""

    sequences: Int[Tensor, "batch total"]
    prompt_len: int
    texts: list[str]
    logits: list[Float[Tensor, "batch vocab"]] | None = None
    states: dict[int, list[Tensor]] | None = None  # layer -> [prefill [B,S,D], step1 [B,1,D], ...]

    @property
    def new_tokens(self) -> Int[Tensor, "batch new"]:
        return self.sequences[:, self.prompt_len:]


# ---------------------------------------------------------------------- planning ----
@dataclass(frozen=True)
class Plan:
    """What one pass does, worked out once for every entry point by :func:`_plan`.

    Attributes:
        order: the layers the pass visits, increasing (an nnsight trace must visit layers in the
            order the model runs them): the steered layers, the read or collected layers and, when
            the prediction happens inside the pass, the predictor's source layer.
        needs_prefill: the predictor reads a layer above a steered one, so its vectors come from
            one extra, unsteered prompt pass before the steered pass (and ``order`` leaves the
            source layer out: the steered pass no longer predicts).
    """

    order: tuple[int, ...]
    needs_prefill: bool = False


def _plan(iv: Intervention | None, reads: Iterable[int] = ()) -> Plan:
    """The layer-visit order and the extra-prefill decision for a (validated) intervention plus
    the layers ``reads`` whose states are read or collected."""
    needs_prefill = iv is not None and iv.needs_extra_prefill
    layers = set(reads)
    if iv is not None:
        layers |= set(iv.layers)
        if iv.predictor is not None and not needs_prefill:
            assert iv.source_layer is not None
            layers.add(iv.source_layer)
    return Plan(order=tuple(sorted(layers)), needs_prefill=needs_prefill)


# ---------------------------------------------------------------------- backends ----
class Backend(Protocol):
    """Runs one model call (a forward or a ``generate``) with an intervention applied."""

    name: BackendName

    def run(self, call: Callable[..., Any], kwargs: dict[str, Any], iv: Intervention | None,
            order: Sequence[int], batch: Batch, *, read: Read | None = None, steps: int | None = None) -> Any:
        """Return ``call(**kwargs)``, visiting ``order`` on each forward (``steps=None``: one forward;
        ``steps=N``: a generation of ``N`` forwards, the prefill then ``N - 1`` decode steps)."""
        ...


class _NnsightBackend:
    """Interventions inside an nnsight trace: the default backend, and what every read uses."""

    name: BackendName = "nnsight"

    def __init__(self, model: nn.Module, layers_path: str) -> None:
        self.traced = nnsight.NNsight(model)
        self._envoys = resolve_path(self.traced, layers_path)

    def run(self, call: Callable[..., Any], kwargs: dict[str, Any], iv: Intervention | None,
            order: Sequence[int], batch: Batch, *, read: Read | None = None, steps: int | None = None) -> Any:
        box: dict[str, Any] = {}

        def fn(**kw: Any) -> Any:
            box["out"] = call(**kw)
            return box["out"]

        if steps is None:
            with self.traced.trace(**kwargs, fn=fn):
                self.visit(0, iv, order, batch, read, {})
            return box["out"]
        with warnings.catch_warnings():
            # an early EOS ends the bounded loop before max_new_tokens; that is expected here
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with self.traced.trace(**kwargs, fn=fn) as tracer:
                memo: dict[str, Tensor] = {}
                for step in tracer.iter[:steps]:
                    self.visit(step, iv, order, batch, read, memo)
        return box["out"]

    def read(self, inputs: dict[str, Tensor], iv: Intervention | None, order: Sequence[int], batch: Batch,
             read: Read) -> None:
        """One forward that stops after the last layer in ``order`` (nothing above it is needed)."""
        with self.traced.trace(**inputs) as tracer:
            self.visit(0, iv, order, batch, read, {})
            tracer.stop()

    def visit(self, step: int, iv: Intervention | None, order: Sequence[int], batch: Batch,
              read: Read | None, memo: dict[str, Tensor]) -> None:
        """Body of one forward inside a trace: visit layers in order, predict, steer, record.

        Runs inside an nnsight trace with real tensors (nnsight 0.8 executes the body eagerly
        in step with the model), so plain Python control flow is fine here.
        """
        for layer in order:
            env = self._envoys[layer]
            out = env.output
            h = _edit(step, layer, _hidden(out), iv, batch, read, memo)
            if h is not None:
                env.output = _replace(out, h)


class _HooksBackend:
    """Plain PyTorch forward hooks doing what the trace body does, registered for one call and
    removed after it (same arithmetic, tested equal, a little less overhead per step)."""

    name: BackendName = "hooks"

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self._layers = layers

    def run(self, call: Callable[..., Any], kwargs: dict[str, Any], iv: Intervention | None,
            order: Sequence[int], batch: Batch, *, read: Read | None = None, steps: int | None = None) -> Any:
        memo: dict[str, Tensor] = {}
        calls = dict.fromkeys(order, 0)  # the step of a layer's forward is how often it ran before

        def hook(layer: int) -> Callable[..., Any]:
            def edit(_m: nn.Module, _inp: Any, out: Any) -> Any:
                step = calls[layer]
                calls[layer] += 1
                h = _edit(step, layer, _hidden(out), iv, batch, read, memo)
                return None if h is None else _replace(out, h)
            return edit

        handles = [self._layers[layer].register_forward_hook(hook(layer)) for layer in order]
        try:
            return call(**kwargs)
        finally:
            for handle in handles:
                handle.remove()


def _hidden(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _replace(out: Any, h: Tensor) -> Any:
    return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h


# ------------------------------------------------------------------------ engine ----
class SteerableModel:
    """A Hugging Face model made steerable.

    Args:
        model: any ``PreTrainedModel`` (text or vision-language), used as is, never modified.
        processor: the processor (VLMs) or tokenizer (text models).
        adapter: the family adapter; looked up by ``config.model_type`` when omitted.
        registry: where to look adapters up (default: the built-in registry).
        system_prompt: an optional system message for every rendered prompt.
        validate: probe the model once (layer output kind, hidden size).
        backend: how :meth:`forward` and :meth:`generate` apply interventions: ``"nnsight"`` (the
            default: an nnsight trace) or ``"hooks"`` (plain PyTorch forward hooks, registered for
            the call and removed after it; same arithmetic, tested equal, a little less overhead
            per step). Reads always use nnsight.
    """

    def __init__(self, model: nn.Module, processor: Any, *, adapter: Adapter | None = None,
                 registry: AdapterRegistry | None = None, system_prompt: str | None = None,
                 validate: bool = True, backend: BackendName = "nnsight") -> None:
        if processor is None:
            raise InputError("SteerableModel needs the model's processor (VLMs) or tokenizer (text models).")
        if backend not in BACKENDS:
            raise InputError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
        self.backend: BackendName = backend
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None) or processor
        self.adapter = adapter or (registry or DEFAULT_REGISTRY).for_model(model)
        self.system_prompt = system_prompt
        self.num_layers = self.adapter.num_layers(model)
        self.hidden_size = self.adapter.hidden_size(model)
        self.image_token_ids = self.adapter.image_token_ids(model, processor)
        self._encoder = ChatEncoder(self.adapter, processor, tuple(self.image_token_ids), type(model).__name__)
        self._tracer = _NnsightBackend(model, self.adapter.layers_path)  # reads always trace
        self._backend: Backend = (self._tracer if backend == "nnsight"
                                  else _HooksBackend(self.adapter.layers(model)))
        if validate:
            self._validate()

    # ------------------------------------------------------------------ metadata ----
    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", "unknown"))

    @property
    def name(self) -> str:
        return str(getattr(self.model.config, "_name_or_path", "") or self.model_type)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        return (f"SteerableModel({type(self.model).__name__}, family={self.adapter.family!r}, "
                f"layers={self.num_layers}, hidden={self.hidden_size})")


    def _validate(self) -> None:
        cfg_layers = getattr(self.model.config.get_text_config(), "num_hidden_layers", None)
        if cfg_layers is not None and cfg_layers != self.num_layers:
            raise AdapterValidationError(
                f"The adapter {self.adapter.family!r} found {self.num_layers} layers at {self.adapter.layers_path!r}, "
                f"but the config says {cfg_layers}; the layers_path points at the wrong stack."
            )
        enc = self.encode(["Hi"])
        _, width = probe_layer_output(self.model, self.adapter.layers(self.model), self._model_inputs(enc))
        if width != self.hidden_size:
            raise AdapterValidationError(
                f"Layer outputs are {width} wide but the config's hidden size is {self.hidden_size}; "
                f"{self.adapter.layers_path!r} is not the residual stream of the language decoder."
            )

    # ------------------------------------------------------------------ encoding ----
    def encode(
        self,
        prompts: Sequence[str],
        images: Sequence[Sequence[ImageLike]] | None = None,
        *,
        completions: Sequence[str | None] | None = None,
        close_turn: bool = False,
        add_generation_prompt: bool = True,
        system: str | None = None,
    ) -> Batch:
        """Render prompts through the chat template and encode them as one left-padded batch.

        ``images[i]`` is the list of images of prompt ``i``. ``completions[i]`` is teacher-forced
        as the start of the assistant turn (``close_turn=True`` closes the turn as the template
        does). Raises :class:`InputError` for images given to a text-only model or a VLM prompt
        without its image. See :class:`steerlib.encoding.ChatEncoder`.
        """
        return self._encoder.encode(prompts, images, completions=completions, close_turn=close_turn,
                                    add_generation_prompt=add_generation_prompt,
                                    system=system if system is not None else self.system_prompt)

    def prompt_lengths(self, prompts: Sequence[str], n_images: Sequence[int] | None = None, *,
                       system: str | None = None) -> list[int]:
        """Text tokens of each prompt as :meth:`encode` renders it (chat template and generation
        prompt; an image counts as its placeholder only). For sorting rows into batches."""
        return self._encoder.prompt_lengths(prompts, n_images,
                                            system=system if system is not None else self.system_prompt)

    def _model_inputs(self, batch: Batch) -> dict[str, Tensor]:
        inputs = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.inputs.items()}
        for k, v in inputs.items():
            if k.startswith("pixel") and v.is_floating_point():
                inputs[k] = v.to(self.dtype)
        if self.adapter.pass_position_ids and "position_ids" not in inputs:
            am = inputs["attention_mask"].long()
            inputs["position_ids"] = (am.cumsum(-1) - 1).masked_fill(am == 0, 1)
        return inputs

    def _gen_inputs(self, batch: Batch) -> dict[str, Tensor]:
        inputs = self._model_inputs(batch)
        inputs.pop("position_ids", None)  # generate derives them from the attention mask
        return inputs


    # ------------------------------------------------------------------ reading -----
    def read(
        self,
        batch: Batch,
        layers: int | Sequence[int],
        reduce: Reduce = "last_prompt",
        intervention: Intervention | None = None,
    ) -> dict[int, Tensor]:
        """Hidden states at ``layers`` for a batch, reduced over positions.

        ``reduce`` (a :data:`~steerlib.positions.Reduce`): ``last_prompt`` (the last prompt token),
        ``last_prompt_no_gen`` (the last token before the generation prompt), ``last_token`` (the
        very last token, e.g. a closed forced turn), ``completion_mean`` (mean over the forced
        completion), ``prompt_mean`` (mean over real prompt tokens) -> ``[batch, d_model]``;
        ``per_token`` (no reduction, pads included) -> ``[batch, seq, d_model]``. The old spellings
        ``last`` and ``all`` still work, with a :class:`DeprecationWarning`.
        An optional ``intervention`` steers the same pass (states are read after steering).
        """
        layers_t = check_layers(layers, self.num_layers)
        red = as_reduce(reduce)
        got = self.read_many(batch, [(layer, red) for layer in layers_t], intervention=intervention)
        return {layer: got[(layer, red)] for layer in layers_t}

    def read_many(
        self,
        batch: Batch,
        requests: Sequence[tuple[int, Reduce]],
        intervention: Intervention | None = None,
    ) -> dict[tuple[int, str], Tensor]:
        """Several ``(layer, reduce)`` reads from one forward pass (see :meth:`read`); the result is
        keyed by the requests as given."""
        reducers: dict[tuple[int, str], Callable[[Tensor], Tensor]] = {}
        for layer, reduce in requests:
            red = as_reduce(reduce)
            check_layers(layer, self.num_layers)
            if red == "completion_mean" and bool((batch.completion_len - batch.trailer_len <= 0).any()):
                raise PositionError("completion_mean needs a teacher-forced completion in every row; encode with completions=.")
            reducers[(layer, reduce)] = self._reducer(batch, red)
        out: dict[tuple[int, str], Tensor] = {}

        def record(layer: int, h: Tensor) -> None:
            for (lay, red), fn in reducers.items():
                if lay == layer:
                    out[(lay, red)] = fn(h)

        iv, plan = self._planned(batch, self._prepare(batch, intervention), reads={lay for lay, _ in reducers})
        with torch.no_grad():
            self._tracer.read(self._model_inputs(batch), iv, plan.order, batch, record)
        return out

    def _reducer(self, batch: Batch, reduce: Reduce) -> Callable[[Tensor], Tensor]:
        if reduce in TOKEN_POSITIONS:
            rows, idx = torch.arange(batch.size), batch.index(reduce)  # type: ignore[arg-type]
            return lambda h: h[rows.to(h.device), idx.to(h.device)].detach().float().cpu()
        if reduce == "per_token":
            return lambda h: h.detach().float().cpu()
        mask = batch.completion_mask() if reduce == "completion_mean" else batch.prompt_mask()

        def mean(h: Tensor) -> Tensor:
            m = mask.to(h.device, h.dtype)[..., None]
            return ((h * m).sum(1) / m.sum(1).clamp(min=1)).detach().float().cpu()

        return mean

    # ------------------------------------------------------------------ steering ----
    def forward(self, batch: Batch, intervention: Intervention | None = None) -> Float[Tensor, "batch seq vocab"]:
        """One steered forward pass; returns the logits."""
        iv, plan = self._planned(batch, self._prepare(batch, intervention))
        with torch.no_grad():
            out = self._run(self.model, self._model_inputs(batch), batch, iv, plan)
        return out.logits

    def generate(
        self,
        batch: Batch,
        intervention: Intervention | None = None,
        *,
        max_new_tokens: int = 32,
        collect: Sequence[int] = (),
        decode: bool = True,
        **generate_kwargs: Any,
    ) -> Generation:
        """Generate with steering; per-row vectors, left padding, pads never steered.

        ``collect`` lists layers whose states are recorded at every step (the prefill's full
        sequence, then each generated token), for P2S's sampled-continuation reduction.
        Other keyword arguments go to ``model.generate`` (``do_sample``, ``output_logits``, ...).
        """
        if max_new_tokens < 1:
            raise InputError("max_new_tokens must be >= 1.")
        iv = self._prepare(batch, intervention)
        collect_t = check_layers(list(collect), self.num_layers) if collect else ()
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if pad is not None:
            kw["pad_token_id"] = pad
        kw.update(generate_kwargs)
        kw["return_dict_in_generate"] = True
        iv, plan = self._planned(batch, iv, reads=collect_t)
        states: dict[int, list[Tensor]] = {layer: [] for layer in collect_t}

        def record(layer: int, h: Tensor) -> None:
            if layer in states:
                states[layer].append(h.detach().float().cpu())

        with torch.no_grad():
            res = self._run(self.model.generate, {**self._gen_inputs(batch), **kw}, batch, iv, plan,
                            read=record if collect_t else None, steps=max_new_tokens)
        seqs = res.sequences if hasattr(res, "sequences") else res
        texts = (self.tokenizer.batch_decode(seqs[:, batch.seq_len:], skip_special_tokens=True) if decode else [])
        logits = getattr(res, "logits", None)
        return Generation(sequences=seqs.cpu(), prompt_len=batch.seq_len, texts=texts,
                          logits=[x.cpu() for x in logits] if logits is not None else None,
                          states=states if collect_t else None)

    # ------------------------------------------------------------------ internals ---
    def _prepare(self, batch: Batch, iv: Intervention | None) -> Intervention | None:
        """Validate an intervention against this model and ``batch`` (None passes through)."""
        if iv is None:
            return None
        if not isinstance(iv, Intervention):
            raise TypeError(f"Expected an Intervention, got {type(iv).__name__}; build one with Intervention.build(...).")
        iv = iv.validate(self.num_layers, self.hidden_size, batch.size)
        if iv.positions.name == "image" and not bool(batch.image_mask.any()):
            raise PositionError("positions='image' but the batch has no image tokens; pass the images with the "
                                "prompts, or steer positions='text' or 'all'.")
        return iv

    def _planned(self, batch: Batch, iv: Intervention | None,
                 reads: Iterable[int] = ()) -> tuple[Intervention | None, Plan]:
        """Plan the pass for a prepared ``iv`` (:func:`_plan`) and, when the plan needs it, run the
        extra prefill: the predictor's vectors then come from an unsteered read of its source layer,
        and the steered pass applies them as plain per-row vectors."""
        plan = _plan(iv, reads)
        if plan.needs_prefill:
            assert iv is not None
            iv = Intervention(layers=iv.layers, vectors=self._predict_extra_prefill(batch, iv), alpha=iv.alpha,
                              positions=iv.positions)
        return iv, plan

    def _predict_extra_prefill(self, batch: Batch, iv: Intervention) -> Tensor:
        assert iv.predictor is not None and iv.source_layer is not None
        h = self.read(batch, [iv.source_layer], reduce=iv.source_position)[iv.source_layer]
        return iv.predictor(h.to(self.device))

    def _run(self, call: Callable[..., Any], kwargs: dict[str, Any], batch: Batch, iv: Intervention | None,
             plan: Plan, *, read: Read | None = None, steps: int | None = None) -> Any:
        """``call(**kwargs)`` through the backend, or as is when the plan visits no layer."""
        if not plan.order:
            return call(**kwargs)
        return self._backend.run(call, kwargs, iv, plan.order, batch, read=read, steps=steps)



def _edit(step: int, layer: int, h: Tensor, iv: Intervention | None, batch: Batch,
          read: Read | None, memo: dict[str, Tensor]) -> Tensor | None:
    """One layer's work on one forward: predict (L2S, first pass), steer, record.

    Returns the new hidden state, or None when this layer is left as it is. Shared by the nnsight
    trace and the forward-hook backend, so both do the same arithmetic. The predictor reads the
    source layer's state before that layer is steered, so a prediction in the pass sees what an
    unsteered pass would (every layer below is unsteered: :func:`_plan` only predicts in the pass
    when the source layer is at or below every steered layer).
    """
    new = None
    if iv is not None and iv.predictor is not None and layer == iv.source_layer and step == 0:
        rows = torch.arange(batch.size, device=h.device)
        memo["predicted"] = iv.predictor(h[rows, batch.index(iv.source_position).to(h.device)])
    if iv is not None and layer in iv.layers:
        v = memo["predicted"] if iv.predictor is not None else iv.vector_for(layer)
        v = v.to(h.device, h.dtype)
        v = (v[None, :] if v.dim() == 1 else v)[:, None, :]
        if step == 0 and h.shape[1] == batch.seq_len:  # the prompt pass: only the masked positions
            mask = iv.positions.prompt_mask(batch.attention_mask, batch.last_prompt_index, batch.image_mask)
            new = h = h + iv.alpha * mask.to(h.device, h.dtype)[..., None] * v
        elif iv.positions.steers_generated:  # a generated token: every row, no mask to build
            new = h = h + iv.alpha * v
    if read is not None:
        read(layer, h)
    return new
