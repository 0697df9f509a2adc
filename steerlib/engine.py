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
from typing import Any, Literal, Protocol, Union, get_args

import nnsight
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from .adapters import DEFAULT_REGISTRY, Adapter, AdapterRegistry
from .adapters.base import resolve_path
from .adapters.families import BUILTIN_ADAPTERS
from .adapters.finder import is_encoder_decoder, search_stacks
from .adapters.probe import probe_image, probe_stack
from .adapters.registry import REGISTER_HOWTO, fallback_adapters, warn_fallback
from .data.items import ImageLike
from .defaults import DEFAULT_MAX_NEW_TOKENS
from .encoding import Batch, ChatEncoder
from .errors import AdapterValidationError, InputError, PositionError, SteerlibError, UnsupportedModelError
from .intervention import Intervention, check_layers
from .positions import READ_REDUCTIONS, TOKEN_POSITIONS, Reduce, as_reduce

__all__ = ["BACKENDS", "READ_REDUCTIONS", "BackendName", "Batch", "Generation", "Plan", "RemoteMode", "SteerableModel"]

BackendName = Literal["nnsight", "hooks"]
"""How :meth:`SteerableModel.forward` and :meth:`SteerableModel.generate` apply interventions."""
BACKENDS: tuple[BackendName, ...] = get_args(BackendName)
RemoteMode = Union[bool, Literal["local"]]
"""Where passes run: ``False`` here; ``True`` on NDIF through nnsight's remote execution; ``"local"``
serialized and deserialized as for NDIF, with steerlib hidden, then run here (see :mod:`steerlib.remote`)."""
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
        placed = isinstance(getattr(model, "hf_device_map", None), dict)
        self.traced = (_PlacedNNsight if placed else nnsight.NNsight)(model)
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
        _visit_layers(self._envoys, step, iv, order, batch, read, memo)


class _PlacedNNsight(nnsight.NNsight):
    """nnsight's wrapper for a model accelerate spread over devices (``device_map=``): nnsight moves a
    trace's inputs to the first parameter's device, which is ``meta`` when that parameter is offloaded
    to the CPU or disk; here they go to the model's execution device instead (accelerate's hooks then
    move each layer's weights and activations where that layer runs)."""

    @property
    def device(self) -> torch.device:
        return _execution_device(self._module)


def _visit_layers(envoys: Sequence[Any], step: int, iv: Intervention | None, order: Sequence[int], batch: Batch,
                  read: Read | None, memo: dict[str, Tensor]) -> None:
    """One forward's trace body over the layer envoys: visit ``order``, predict, steer, record.

    Shared by the local trace and the remote one (:mod:`steerlib.remote` ships it by value)."""
    for layer in order:
        env = envoys[layer]
        out = env.output
        h = _edit(step, layer, _hidden(out), iv, batch, read, memo)
        if h is not None:
            env.output = _replace(out, h)


class _Reduction:
    """One read's reduction of a ``[batch, seq, d_model]`` state (a plain object, not a closure, so a
    remote pass can ship it): a token position per row, the masked mean, or no reduction."""

    def __init__(self, kind: Literal["index", "mean", "none"], rows: Tensor | None = None,
                 idx: Tensor | None = None, mask: Tensor | None = None) -> None:
        self.kind, self.rows, self.idx, self.mask = kind, rows, idx, mask

    def __call__(self, h: Tensor) -> Tensor:
        if self.kind == "index":
            assert self.rows is not None and self.idx is not None
            return h[self.rows.to(h.device), self.idx.to(h.device)].detach().float().cpu()
        if self.kind == "none":
            return h.detach().float().cpu()
        assert self.mask is not None
        m = self.mask.to(h.device, h.dtype)[..., None]
        return ((h * m).sum(1) / m.sum(1).clamp(min=1)).detach().float().cpu()


class _Reads:
    """What one pass records (the ``read`` callback of a backend): reductions keyed by
    ``(layer, reduce)``, and every step's state of the ``collect`` layers. All results sit in
    :attr:`data`, a plain dict, so a remote pass can send it back (:meth:`absorb`)."""

    def __init__(self, reducers: dict[tuple[int, str], _Reduction] | None = None, collect: Sequence[int] = ()) -> None:
        self.reducers = dict(reducers or {})
        self.data: dict[str, dict[Any, Any]] = {"out": {}, "states": {layer: [] for layer in collect}}

    def __call__(self, layer: int, h: Tensor) -> None:
        for (lay, red), fn in self.reducers.items():
            if lay == layer:
                self.data["out"][(lay, red)] = fn(h)
        if layer in self.data["states"]:
            self.data["states"][layer].append(h.detach().float().cpu())

    def absorb(self, data: dict[str, dict[Any, Any]]) -> None:
        """Take over what a (remote) copy of this recorder recorded."""
        if data is not self.data:
            self.data["out"].update(data["out"])
            self.data["states"].update(data["states"])


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


def _execution_device(model: nn.Module) -> torch.device:
    """The device a model computes on: see :attr:`SteerableModel.device`."""
    placed = getattr(model, "hf_device_map", None)
    if isinstance(placed, dict) and placed:
        gpus = [d for d in placed.values() if d not in ("cpu", "disk")]
        if gpus:
            first = gpus[0]
            return torch.device(f"cuda:{first}" if isinstance(first, int) else first)
        return torch.device("cpu")
    return next(model.parameters()).device


def _config_layers(model: nn.Module) -> int | None:
    """The text config's layer count, when it states one."""
    cfg = getattr(model, "config", None)
    get = getattr(cfg, "get_text_config", None)
    cfg = get() if callable(get) else cfg
    value = getattr(cfg, "num_hidden_layers", None)
    return value if isinstance(value, int) else None


def _unwrap_nnsight(model: Any) -> nn.Module:
    """The Hugging Face model inside an nnsight wrapper (``NNsight``, ``LanguageModel``,
    ``TransformersModel``): steerlib traces the model itself. The Envoy of a sub-module is refused."""
    cls = type(model)
    if not any(c.__module__.split(".")[0] == "nnsight" for c in cls.__mro__):
        return model
    inner = vars(model).get("_module")
    if cls.__name__ != "Envoy" and isinstance(inner, nn.Module):
        return inner
    raise InputError(f"Got an nnsight {cls.__name__} (a wrapped part of a model), not a Hugging Face model: pass "
                     "the underlying Hugging Face model, e.g. SteerableModel(hf_model, tokenizer).")


def _max_positions(model: nn.Module) -> int | None:
    """The model's maximum sequence length from its (text) config, or None when it names none."""
    cfg = getattr(model, "config", None)
    for c in (getattr(cfg, "text_config", None), cfg):
        for attr in ("max_position_embeddings", "n_positions"):
            v = getattr(c, attr, None)
            if isinstance(v, int) and v > 0:
                return v
    return None


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
        remote: run every pass through nnsight's remote execution (:mod:`steerlib.remote`): ``True``
            sends each pass to NDIF (``model`` is then usually an nnsight ``LanguageModel`` built on
            the meta device, see :func:`steerlib.zoo.remote_steerable`); ``"local"`` is nnsight's
            offline stand-in for a server (the request is serialized, deserialized with steerlib
            hidden, and run here). Needs ``backend="nnsight"``.
    """

    def __init__(self, model: nn.Module, processor: Any, *, adapter: Adapter | None = None,
                 registry: AdapterRegistry | None = None, system_prompt: str | None = None,
                 validate: bool = True, backend: BackendName = "nnsight", remote: RemoteMode = False) -> None:
        if processor is None:
            raise InputError("SteerableModel needs the model's processor (VLMs) or tokenizer (text models).")
        if backend not in BACKENDS:
            raise InputError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
        if remote not in (False, True, "local"):
            raise InputError(f"remote={remote!r}: use False (run here), True (NDIF) or 'local' (the offline stand-in).")
        if remote and backend != "nnsight":
            raise InputError(f"backend={backend!r} cannot run remotely: forward hooks need the model in this process. "
                             "Use backend='nnsight' (the default) with remote=.")
        self.backend: BackendName = backend
        self.remote: RemoteMode = remote
        self._wrapper: Any = None
        if remote and (isinstance(model, nnsight.NNsight) or hasattr(model, "to_model_key")):
            self._wrapper, model = model, model._module  # a remote wrapper (a meta model) is kept to send requests
        else:
            model = _unwrap_nnsight(model)
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None) or processor
        self.system_prompt = system_prompt
        if is_encoder_decoder(model):
            raise UnsupportedModelError(
                f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', None)!r}) is an "
                "encoder-decoder model. steerlib steers decoder-only language models (and VLMs built on one): its "
                "generate, reads and positions assume one causal decoder over the prompt, and would be wrong here. "
                "Use a decoder-only model of the family instead."
            )
        reg = registry or DEFAULT_REGISTRY
        options, fallback = [adapter], False
        if adapter is None:
            known = reg.get(str(getattr(getattr(model, "config", None), "model_type", None)))
            options, fallback = ([known], False) if known is not None else (fallback_adapters(model, processor), True)
            if not options:
                raise reg.unknown(model)
        if self.on_meta and self.remote is not True:
            raise InputError(
                f"{type(model).__name__}'s weights are on the meta device (a module tree built from its config), so "
                + ("it cannot run here; pass remote=True to run it on NDIF, or load the weights." if not self.remote else
                   "remote='local', which runs the request here, would load its weights first; load the model "
                   "normally for remote='local', or use remote=True."))
        self._choose(options, fallback, validate)  # sets adapter, sizes, encoder and backends

    # ------------------------------------------------------------------ metadata ----
    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", "unknown"))

    @property
    def name(self) -> str:
        return str(getattr(self.model.config, "_name_or_path", "") or self.model_type)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the parameters' device or, for a model accelerate spread over devices
        (``device_map=``, ``hf_device_map``), its execution device (the first GPU in the map, else the
        CPU; weights offloaded to the CPU or disk are brought there layer by layer)."""
        return _execution_device(self.model)

    @property
    def on_meta(self) -> bool:
        """True when the model's weights are on the meta device (a remote model built from its config)."""
        return self.device.type == "meta"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        return (f"SteerableModel({type(self.model).__name__}, family={self.adapter.family!r}, "
                f"layers={self.num_layers}, hidden={self.hidden_size})")


    def _use(self, adapter: Adapter) -> None:
        """Make ``adapter`` this model's adapter (sizes, encoder, backends); nothing is probed."""
        model, processor = self.model, self.processor
        self.adapter = adapter
        self.num_layers = adapter.num_layers(model)
        self.hidden_size = adapter.hidden_size(model)
        self.image_token_ids = adapter.image_token_ids(model, processor)
        self._pass_position_ids = adapter.pass_position_ids
        self._pad_exact = True  # False: the model ignores the attention mask, padded batches are refused
        self._encoder = ChatEncoder(adapter, processor, tuple(self.image_token_ids), type(model).__name__,
                                    max_positions=_max_positions(model))
        if self.remote:
            from .remote import PassOps, RemoteBackend

            self._tracer = RemoteBackend.for_model(self, adapter.layers_path, PassOps(_visit_layers, _with_vectors))
        else:
            self._tracer = _NnsightBackend(model, adapter.layers_path)  # reads always trace
        self._backend: Backend = (self._tracer if self.backend == "nnsight" else _HooksBackend(adapter.layers(model)))

    def _choose(self, options: Sequence[Adapter], fallback: bool, validate: bool) -> None:
        """Use the first adapter of ``options`` that passes validation (a given or registered adapter is
        the only option; the fallback's candidates come ranked). The error names every rejection."""
        tried: list[tuple[Adapter, SteerlibError]] = []
        for option in options:
            try:
                self._use(option)
                if validate:
                    self._validate()
            except (AdapterValidationError, UnsupportedModelError) as e:
                if not fallback:
                    raise
                tried.append((option, e))
                continue
            if fallback:
                warn_fallback(self.model, option)
            return
        mt = getattr(getattr(self.model, "config", None), "model_type", None)
        lines = "\n".join(f"  {a.layers_path!r}: {type(e).__name__}: {e}" for a, e in tried)
        lines += "".join(f"\n  rejected by its path: {c.describe()}" for c in search_stacks(self.model).rejected)
        kind = UnsupportedModelError if any(isinstance(e, UnsupportedModelError) for _, e in tried) else AdapterValidationError
        raise kind(f"No decoder stack of {type(self.model).__name__} (model_type {mt!r}) passed validation. The "
                   f"fallback tried, in rank order:\n{lines}\n" + REGISTER_HOWTO)

    def _validate(self) -> None:
        """Probe the adapter with inputs the model accepts; for adapters that are not built in (found by the
        fallback, or given by the user), also check causality, position ids and padding."""
        path = self.adapter.layers_path
        cfg_layers = _config_layers(self.model)
        if cfg_layers is not None and cfg_layers != self.num_layers:
            raise AdapterValidationError(
                f"The adapter {self.adapter.family!r} found {self.num_layers} layers at {path!r}, "
                f"but the config says {cfg_layers}; the layers_path points at the wrong stack."
            )
        if self.on_meta:  # no weights here to probe: a remote model is checked by its config and module tree
            return
        enc = self._probe(["Hello, how are you today?"])
        if self.adapter in BUILTIN_ADAPTERS:
            return
        try:
            if self._uses_images(enc):
                self._check_position_ids(enc)
            else:
                self._check_causal(enc)
                self._check_padding()
                if self.adapter.is_vlm and getattr(self.processor, "image_processor", None) is not None:
                    img = self._image_probe_batch()  # the processor's image encoding must fit the model too
                    probe_stack(self.model, self.adapter.layers(self.model), self._model_inputs(img), path=path,
                                hidden_size=self.hidden_size)
                    self._check_position_ids(img)
        except SteerlibError:
            raise
        except Exception as e:  # a raw model error on an ordinary (padded) probe batch
            raise AdapterValidationError(
                f"A probe forward of {type(self.model).__name__} (stack {path!r}) failed: {type(e).__name__}: {e}. "
                "The model does not run on a padded batch of this processor's encodings; check the processor."
            ) from e

    def _probe(self, prompts: list[str]) -> Batch:
        """Run the stack probe on a text prompt; a VLM that needs pixel values in every forward is probed
        with a tiny image instead. Returns the probe's batch."""
        path = self.adapter.layers_path
        layers = self.adapter.layers(self.model)
        enc = self.encode(prompts)
        try:
            probe_stack(self.model, layers, self._model_inputs(enc), path=path, hidden_size=self.hidden_size)
            return enc
        except SteerlibError:
            raise
        except Exception as e:  # a raw model error: the model may need pixel values
            if not self.adapter.is_vlm or getattr(self.processor, "image_processor", None) is None:
                raise AdapterValidationError(
                    f"The probe forward of {type(self.model).__name__} with the text prompt {prompts[0]!r} failed "
                    f"(stack {path!r}): {type(e).__name__}: {e}. The model does not accept this processor's text "
                    "encoding; pass the matching processor or tokenizer."
                ) from e
            text_error = e
        try:
            enc = self._image_probe_batch()
            probe_stack(self.model, layers, self._model_inputs(enc), path=path, hidden_size=self.hidden_size)
        except SteerlibError:
            raise
        except Exception as e:
            raise AdapterValidationError(
                f"The probe forward of {type(self.model).__name__} failed with a text prompt "
                f"({type(text_error).__name__}: {text_error}) and with a tiny image ({type(e).__name__}: {e}) "
                f"(stack {path!r}). Check that the processor matches the model."
            ) from e
        return enc

    def _image_probe_batch(self) -> Batch:
        """A one-image probe batch: with images a VLM may compute its own (3-D rotary) position ids."""
        return self.encode(["Describe the image."], [[probe_image()]])

    def _uses_images(self, enc: Batch) -> bool:
        return any(k.startswith("pixel") for k in enc.inputs)

    def _probe_logits(self, enc: Batch, **extra: Any) -> Tensor:
        with torch.no_grad():
            return self.model(**{**self._model_inputs(enc), **extra}).logits.float()

    def _same(self, a: Tensor, b: Tensor) -> bool:
        tol = 1e-4 if self.dtype == torch.float32 else 5e-2
        return bool((a - b).abs().max() <= tol * max(1.0, float(b.abs().max())))

    def _check_causal(self, enc: Batch) -> None:
        """A later token must not change an earlier token's logits (an encoder used as an LM would)."""
        ids = enc.inputs["input_ids"]
        if ids.shape[1] < 2:
            return
        other = enc.inputs | {"input_ids": ids.clone()}
        other["input_ids"][:, -1] = (ids[:, -1] + 1) % max(2, int(ids.max()) + 1)
        changed = Batch(inputs=other, image_mask=enc.image_mask, completion_len=enc.completion_len,
                        trailer_len=enc.trailer_len, gen_prompt_len=enc.gen_prompt_len)
        if not self._same(self._probe_logits(changed)[:, :-1], self._probe_logits(enc)[:, :-1]):
            raise UnsupportedModelError(
                f"{type(self.model).__name__} (stack {self.adapter.layers_path!r}) attends bidirectionally: changing "
                "the last prompt token changed the earlier tokens' outputs. steerlib steers causal decoders; its "
                "reads and positions would be wrong here. Use a causal language model."
            )

    def _check_position_ids(self, enc: Batch) -> None:
        """A model that computes its own (e.g. 3-D rotary) position ids must not get 1-D ones from steerlib."""
        if not self._pass_position_ids:
            return
        if self._same(self._probe_logits(enc), self._without_position_ids(enc)):
            return
        self._pass_position_ids = False
        warnings.warn(
            f"{type(self.model).__name__} computes its own position ids (e.g. multimodal 3-D rotary positions): "
            f"passing 1-D ids from the attention mask changes its logits, so steerlib does not pass them. Set "
            f"pass_position_ids=False in the {self.adapter.family!r} adapter to silence this.",
            stacklevel=4,
        )

    def _without_position_ids(self, enc: Batch) -> Tensor:
        inputs = self._model_inputs(enc)
        inputs.pop("position_ids", None)
        with torch.no_grad():
            return self.model(**inputs).logits.float()

    def _check_padding(self) -> None:
        """A left-padded row must give the logits of the row alone (forward and generate); a model that
        ignores the attention mask fails this, and padded batches are then refused."""
        short, long_ = "Hi", "Hello there, what is shown in this image today?"
        both, alone = self.encode([short, long_]), self.encode([short])
        if both.seq_len == alone.seq_len:
            return
        n = alone.seq_len
        same = self._same(self._probe_logits(both)[:1, -n:], self._probe_logits(alone))
        if same:
            kw: dict[str, Any] = dict(max_new_tokens=2, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            if pad is not None:
                kw["pad_token_id"] = pad
            try:
                with torch.no_grad():
                    g2 = self.model.generate(**self._gen_inputs(both), **kw)
                    g1 = self.model.generate(**self._gen_inputs(alone), **kw)
            except Exception:  # a model that cannot generate: forward is all steerlib can check
                return
            same = all(self._same(a[:1].float(), b.float()) for a, b in zip(g2.logits, g1.logits))
        if not same:
            self._pad_exact = False
            warnings.warn(
                f"{type(self.model).__name__} ignores the attention mask: a left-padded row differs from the same "
                "row alone. steerlib refuses padded batches for this model (UnsupportedModelError); pass prompts one "
                "at a time or batches of equal length.",
                stacklevel=4,
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
        if not self._pad_exact and bool((batch.attention_mask == 0).any()):
            raise UnsupportedModelError(
                f"{type(self.model).__name__} ignores the attention mask, so this left-padded batch would give "
                "different results than its rows alone. Pass prompts one at a time, or batches whose prompts "
                "encode to the same length."
            )
        device = torch.device("cpu") if self.remote else self.device  # remotely, nnsight moves inputs on the server
        inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.inputs.items()}
        for k, v in inputs.items():
            if k.startswith("pixel") and v.is_floating_point():
                inputs[k] = v.to(self.dtype)
        if self._pass_position_ids and "position_ids" not in inputs:
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
        reducers: dict[tuple[int, str], _Reduction] = {}
        for layer, reduce in requests:
            red = as_reduce(reduce)
            check_layers(layer, self.num_layers)
            if red == "completion_mean" and bool((batch.completion_len - batch.trailer_len <= 0).any()):
                raise PositionError("completion_mean needs a teacher-forced completion in every row; encode with completions=.")
            reducers[(layer, reduce)] = self._reducer(batch, red)
        record = _Reads(reducers)
        iv, plan = self._planned(batch, self._prepare(batch, intervention), reads={lay for lay, _ in reducers})
        with torch.no_grad():
            self._tracer.read(self._model_inputs(batch), iv, plan.order, batch, record)
        return {key: record.data["out"][key] for key in reducers}

    def _reducer(self, batch: Batch, reduce: Reduce) -> _Reduction:
        if reduce in TOKEN_POSITIONS:
            return _Reduction("index", rows=torch.arange(batch.size), idx=batch.index(reduce))  # type: ignore[arg-type]
        if reduce == "per_token":
            return _Reduction("none")
        return _Reduction("mean", mask=batch.completion_mask() if reduce == "completion_mean" else batch.prompt_mask())

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
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
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
        self._encoder.check_length(batch.seq_len, new_tokens=max_new_tokens)
        iv = self._prepare(batch, intervention)
        collect_t = check_layers(list(collect), self.num_layers) if collect else ()
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if pad is not None:
            kw["pad_token_id"] = pad
        kw.update(generate_kwargs)
        kw["return_dict_in_generate"] = True
        iv, plan = self._planned(batch, iv, reads=collect_t)
        record = _Reads(collect=collect_t)
        states: dict[int, list[Tensor]] = record.data["states"]
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
        iv = iv.validate(self.num_layers, self.hidden_size, batch.size, dtype=self.dtype)
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
        if plan.needs_prefill and not self.remote:  # remotely, the prefill is a second trace of the same request
            assert iv is not None
            iv = _with_vectors(iv, self._predict_extra_prefill(batch, iv))
        return iv, plan

    def _predict_extra_prefill(self, batch: Batch, iv: Intervention) -> Tensor:
        assert iv.predictor is not None and iv.source_layer is not None
        h = self.read(batch, [iv.source_layer], reduce=iv.source_position)[iv.source_layer]
        return iv.predictor(h.to(self.device))

    def _run(self, call: Callable[..., Any], kwargs: dict[str, Any], batch: Batch, iv: Intervention | None,
             plan: Plan, *, read: Read | None = None, steps: int | None = None) -> Any:
        """``call(**kwargs)`` through the backend, or as is when the plan visits no layer."""
        if not plan.order and not self.remote:
            return call(**kwargs)
        if self.remote:
            prefill = self._model_inputs(batch) if plan.needs_prefill else None
            return self._backend.run(call, kwargs, iv, plan.order, batch, read=read, steps=steps,  # type: ignore[call-arg]
                                     prefill=prefill)
        return self._backend.run(call, kwargs, iv, plan.order, batch, read=read, steps=steps)



def _with_vectors(iv: Intervention, vectors: Tensor) -> Intervention:
    """``iv`` with its predictor's per-row ``vectors`` in place of the predictor (after an extra prefill)."""
    return Intervention(layers=iv.layers, vectors=vectors, alpha=iv.alpha, positions=iv.positions,
                        norm_preserving=iv.norm_preserving)


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
    if iv is not None and layer in iv.layers and (iv.ablate is not None or iv.norm_preserving):
        new = _ablate_add(step, layer, h, iv, batch, memo)
        h = h if new is None else new
    elif iv is not None and layer in iv.layers:
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


def _ablate_add(step: int, layer: int, h: Tensor, iv: Intervention, batch: Batch,
                memo: dict[str, Tensor]) -> Tensor | None:
    """:func:`_edit`'s arithmetic with ablation and/or norm preservation, at the same positions as
    the plain addition: remove the component along each unit direction, add ``alpha * v``, then
    (``norm_preserving``) rescale each steered token to its norm before this layer's edit."""
    if step == 0 and h.shape[1] == batch.seq_len:
        m = iv.positions.prompt_mask(batch.attention_mask, batch.last_prompt_index, batch.image_mask)
        m = m.to(h.device)[..., None]
    elif iv.positions.steers_generated:
        m = None
    else:
        return None
    mf = None if m is None else m.to(h.dtype)
    out = h
    for u in (iv.ablate or {}).get(layer, ()):
        u = u.to(h.device, h.dtype)
        u = (u[None, :] if u.dim() == 1 else u)[:, None, :]
        proj = (out * u).sum(-1, keepdim=True) * u
        out = out - (proj if mf is None else mf * proj)
    if iv.adds_at(layer):
        v = memo["predicted"] if iv.predictor is not None else iv.vector_for(layer)
        v = v.to(h.device, h.dtype)
        v = (v[None, :] if v.dim() == 1 else v)[:, None, :]
        out = out + iv.alpha * (v if mf is None else mf * v)
    if iv.norm_preserving:
        scaled = out * (h.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        out = scaled if m is None else torch.where(m, scaled, h)
    return out
