"""The engine: read hidden states and add steering vectors through nnsight.

:class:`SteerableModel` wraps a Hugging Face model, its processor (or tokenizer) and its
adapter. It never mutates the model: interventions exist only inside an nnsight trace.
Layer ``i`` is the output of decoder block ``i`` (HF ``hidden_states[i + 1]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nnsight
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .adapters import DEFAULT_REGISTRY, Adapter, AdapterRegistry
from .adapters.base import probe_layer_output, resolve_path
from .data.items import ImageLike, load_image
from .errors import AdapterValidationError, InputError, PositionError, ShapeMismatchError
from .intervention import Intervention, check_layers

READ_REDUCTIONS = ("last_prompt", "last_prompt_no_gen", "last", "completion_mean", "prompt_mean", "all")
BACKENDS = ("nnsight", "hooks")


@dataclass
class Batch:
    """An encoded, left-padded batch plus the bookkeeping positions need.

    ``completion_len`` counts the tokens after the prompt (a teacher-forced completion and, with
    ``close_turn``, the template's end-of-turn trailer); ``trailer_len`` counts the trailer alone;
    ``gen_prompt_len`` counts the chat template's generation-prompt tokens (-1 when unknown).
    """

    inputs: dict[str, Tensor]
    image_mask: Bool[Tensor, "batch seq"]
    completion_len: Int[Tensor, " batch"]
    trailer_len: Int[Tensor, " batch"]
    gen_prompt_len: Int[Tensor, " batch"]
    texts: list[str] = field(default_factory=list)

    @property
    def input_ids(self) -> Int[Tensor, "batch seq"]:
        return self.inputs["input_ids"]

    @property
    def attention_mask(self) -> Int[Tensor, "batch seq"]:
        return self.inputs["attention_mask"]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def last_prompt_index(self) -> Int[Tensor, " batch"]:
        """Index of each row's last prompt token (left padding puts prompts flush right)."""
        return self.seq_len - 1 - self.completion_len

    @property
    def last_prompt_no_gen_index(self) -> Int[Tensor, " batch"]:
        """Index of the last token before the generation prompt (the paper's safety L2S input)."""
        if (self.gen_prompt_len < 0).any():
            raise PositionError(
                "This chat template's prompt without the generation prompt is not a prefix of the prompt with it, "
                "so 'last_prompt_no_gen' is undefined; use 'last_prompt'."
            )
        return self.last_prompt_index - self.gen_prompt_len

    def completion_mask(self) -> Bool[Tensor, "batch seq"]:
        """The forced completion tokens (without the template's trailer)."""
        idx = torch.arange(self.seq_len)[None, :]
        start = self.last_prompt_index[:, None]
        end = (self.seq_len - 1 - self.trailer_len)[:, None]
        return (idx > start) & (idx <= end)

    def prompt_mask(self) -> Bool[Tensor, "batch seq"]:
        idx = torch.arange(self.seq_len)[None, :]
        return self.attention_mask.bool() & (idx <= self.last_prompt_index[:, None])

    def select(self, rows: Sequence[int]) -> "Batch":
        """A sub-batch (text-only inputs; VLM pixel tensors are not sliceable in general)."""
        keys = {k for k, v in self.inputs.items() if isinstance(v, Tensor) and v.shape[:1] != self.input_ids.shape[:1]}
        if keys or any(k.startswith("pixel") for k in self.inputs):
            raise InputError("Cannot slice a batch holding image inputs; encode the rows you need instead.")
        idx = torch.as_tensor(list(rows))
        inputs = {k: v[idx] for k, v in self.inputs.items()}
        # drop all-pad columns on the left so the sub-batch matches a fresh encoding
        keep = int(inputs["attention_mask"].sum(1).max())
        cut = self.seq_len - keep
        inputs = {k: (v[:, cut:] if v.dim() >= 2 and v.shape[1] == self.seq_len else v) for k, v in inputs.items()}
        return Batch(inputs=inputs, image_mask=self.image_mask[idx][:, cut:], completion_len=self.completion_len[idx],
                     trailer_len=self.trailer_len[idx], gen_prompt_len=self.gen_prompt_len[idx],
                     texts=[self.texts[i] for i in rows] if self.texts else [])


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


def _hidden(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _replace(out: Any, h: Tensor) -> Any:
    return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h


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
                 validate: bool = True, backend: str = "nnsight") -> None:
        if processor is None:
            raise InputError("SteerableModel needs the model's processor (VLMs) or tokenizer (text models).")
        if backend not in BACKENDS:
            raise InputError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
        self.backend = backend
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None) or processor
        self.adapter = adapter or (registry or DEFAULT_REGISTRY).for_model(model)
        self.system_prompt = system_prompt
        self.num_layers = self.adapter.num_layers(model)
        self.hidden_size = self.adapter.hidden_size(model)
        self.image_token_ids = self.adapter.image_token_ids(model, processor)
        self._nn = nnsight.NNsight(model)
        self._envoys = resolve_path(self._nn, self.adapter.layers_path)
        self.output_is_tuple = False
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
        is_tuple, width = probe_layer_output(self.model, self.adapter.layers(self.model), self._model_inputs(enc))
        if width != self.hidden_size:
            raise AdapterValidationError(
                f"Layer outputs are {width} wide but the config's hidden size is {self.hidden_size}; "
                f"{self.adapter.layers_path!r} is not the residual stream of the language decoder."
            )
        self.output_is_tuple = is_tuple

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
        without its image.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InputError("No prompt given: pass a non-empty list of prompts.")
        n = len(prompts)
        if images is not None and len(images) != n:
            raise ShapeMismatchError(f"{len(images)} image lists for {n} prompts; give one list (maybe empty) per prompt.")
        if completions is not None and len(completions) != n:
            raise ShapeMismatchError(f"{len(completions)} completions for {n} prompts; give one per prompt.")
        imgs = [list(r) if r is not None else [] for r in (images or [[] for _ in prompts])]
        if any(imgs) and not self.adapter.is_vlm:
            raise InputError(
                f"Images were given, but {type(self.model).__name__} ({self.adapter.family}) is a text-only model. "
                "Drop the images or load a vision-language model."
            )
        if any(imgs) and not all(len(r) == len(imgs[0]) for r in imgs):
            raise InputError("Every prompt in a batch must have the same number of images; batch them separately.")
        system = system if system is not None else self.system_prompt
        tok = self.tokenizer
        texts, comp_len, trail_len, gp_len = [], [], [], []
        for i, p in enumerate(prompts):
            c = completions[i] if completions is not None else None
            k = len(imgs[i])
            base = self.adapter.render(self.processor, p, k, system=system, add_generation_prompt=add_generation_prompt or c is not None)
            text = base if c is None else self.adapter.render(self.processor, p, k, system=system, completion=c,
                                                              close_turn=close_turn)
            nb = _count(tok, base)
            comp_len.append(_count(tok, text) - nb if c is not None else 0)
            if c is not None and close_turn:
                opened = self.adapter.render(self.processor, p, k, system=system, completion=c)
                if not text.startswith(opened):
                    raise InputError(f"The {self.adapter.family} template renders the open and the closed assistant "
                                     "turn differently; use close_turn=False.")
                trail_len.append(_count(tok, text) - _count(tok, opened))
            else:
                trail_len.append(0)
            bare = self.adapter.render(self.processor, p, k, system=system, add_generation_prompt=False)
            gp_len.append(nb - _count(tok, bare) if base.startswith(bare) else -1)
            texts.append(text)
        inputs = self._tokenize(texts, imgs)
        ids = inputs["input_ids"]
        if completions is not None:  # a processor may append tokens after the text (PaliGemma's "\n")
            extra = torch.tensor([_appended_tokens(tok, texts[i], ids[i]) for i in range(n)])
            comp_len = [c + int(e) if c else c for c, e in zip(comp_len, extra)]
            trail_len = [t + int(e) if c else t for c, t, e in zip(comp_len, trail_len, extra)]
        if self.image_token_ids:
            image_mask = torch.isin(ids, torch.tensor(self.image_token_ids, device=ids.device))
        else:
            image_mask = torch.zeros_like(ids, dtype=torch.bool)
        if self.adapter.is_vlm:
            for i in range(n):
                has = bool(image_mask[i].any())
                if imgs[i] and not has and self.image_token_ids:
                    raise InputError(f"Prompt {i} was given an image but its encoding has no image tokens; "
                                     "check the chat template or image placeholder.")
                if has and not imgs[i]:
                    raise InputError(f"Prompt {i} contains an image placeholder but no image was given; "
                                     "pass its image (images=[[img], ...]) or remove the placeholder.")
        return Batch(inputs=inputs, image_mask=image_mask.cpu(), completion_len=torch.tensor(comp_len),
                     trailer_len=torch.tensor(trail_len), gen_prompt_len=torch.tensor(gp_len), texts=texts)

    def prompt_lengths(self, prompts: Sequence[str], n_images: Sequence[int] | None = None, *,
                       system: str | None = None) -> list[int]:
        """Text tokens of each prompt as :meth:`encode` renders it (chat template and generation
        prompt; an image counts as its placeholder only). For sorting rows into batches."""
        system = system if system is not None else self.system_prompt
        # a text-only model given images: counted without them; encode() reports the mistake
        counts = list(n_images) if n_images is not None and self.adapter.is_vlm else [0] * len(prompts)
        return [_count(self.tokenizer, self.adapter.render(self.processor, p, k, system=system,
                                                           add_generation_prompt=True))
                for p, k in zip(prompts, counts, strict=True)]

    def _tokenize(self, texts: list[str], imgs: list[list[ImageLike]]) -> dict[str, Tensor]:
        tok = self.tokenizer
        bos = getattr(tok, "bos_token", None)
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        if self.processor is tok or not any(imgs):
            # text: encode rows one by one and left-pad ourselves (no need for a pad token)
            rows = [tok(t, add_special_tokens=add_special)["input_ids"] for t in texts]
            pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                if r:
                    ids[i, width - len(r):] = torch.tensor(r)
                    mask[i, width - len(r):] = 1
            return {"input_ids": ids, "attention_mask": mask}
        kwargs: dict[str, Any] = dict(text=texts, return_tensors="pt", padding=True, padding_side="left",
                                      add_special_tokens=add_special)
        if any(imgs):
            kwargs["images"] = self.adapter.format_images([[load_image(im) for im in row] for row in imgs])
        enc = self.processor(**kwargs)
        out = {k: v for k, v in enc.items() if k not in self.adapter.drop_keys and isinstance(v, Tensor)}
        if (out["attention_mask"][:, -1] == 0).any():
            raise InputError("The processor padded on the right; steerlib needs left padding for generation.")
        return out

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
        reduce: str = "last_prompt",
        intervention: Intervention | None = None,
    ) -> dict[int, Tensor]:
        """Hidden states at ``layers`` for a batch, reduced over positions.

        ``reduce``: ``last_prompt`` (the last prompt token), ``last_prompt_no_gen`` (the last token
        before the generation prompt), ``last`` (the last token, e.g. a closed forced turn),
        ``completion_mean`` (mean over the forced completion), ``prompt_mean`` (mean over real
        prompt tokens) -> ``[batch, d_model]``; ``all`` -> ``[batch, seq, d_model]``.
        An optional ``intervention`` steers the same pass (states are read after steering).
        """
        layers_t = check_layers(layers, self.num_layers)
        got = self.read_many(batch, [(layer, reduce) for layer in layers_t], intervention=intervention)
        return {layer: got[(layer, reduce)] for layer in layers_t}

    def read_many(
        self,
        batch: Batch,
        requests: Sequence[tuple[int, str]],
        intervention: Intervention | None = None,
    ) -> dict[tuple[int, str], Tensor]:
        """Several ``(layer, reduce)`` reads from one forward pass (see :meth:`read`)."""
        reducers: dict[tuple[int, str], Callable[[Tensor], Tensor]] = {}
        for layer, reduce in requests:
            if reduce not in READ_REDUCTIONS:
                raise PositionError(f"Unknown reduction {reduce!r}; use one of {', '.join(READ_REDUCTIONS)}.")
            check_layers(layer, self.num_layers)
            if reduce == "completion_mean" and bool((batch.completion_len - batch.trailer_len <= 0).any()):
                raise PositionError("completion_mean needs a teacher-forced completion in every row; encode with completions=.")
            reducers[(layer, reduce)] = self._reducer(batch, reduce)
        out: dict[tuple[int, str], Tensor] = {}

        def record(layer: int, h: Tensor) -> None:
            for (lay, red), fn in reducers.items():
                if lay == layer:
                    out[(lay, red)] = fn(h)

        iv = self._prepare(batch, intervention) if intervention is not None else None
        order = sorted({lay for lay, _ in reducers} | set(iv.layers if iv else ()))
        with torch.no_grad(), self._nn.trace(**self._model_inputs(batch)) as tracer:
            self._step(0, iv, order, batch, read=record)
            tracer.stop()  # nothing above the highest read layer is needed
        return out

    def _reducer(self, batch: Batch, reduce: str) -> Callable[[Tensor], Tensor]:
        rows = torch.arange(batch.size)
        if reduce in ("last_prompt", "last_prompt_no_gen", "last"):
            idx = {"last_prompt": batch.last_prompt_index, "last": torch.full((batch.size,), batch.seq_len - 1),
                   "last_prompt_no_gen": batch.last_prompt_no_gen_index if reduce == "last_prompt_no_gen" else None}[reduce]
            return lambda h: h[rows.to(h.device), idx.to(h.device)].detach().float().cpu()
        if reduce == "all":
            return lambda h: h.detach().float().cpu()
        mask = batch.completion_mask() if reduce == "completion_mean" else batch.prompt_mask()

        def mean(h: Tensor) -> Tensor:
            m = mask.to(h.device, h.dtype)[..., None]
            return ((h * m).sum(1) / m.sum(1).clamp(min=1)).detach().float().cpu()

        return mean

    # ------------------------------------------------------------------ steering ----
    def forward(self, batch: Batch, intervention: Intervention | None = None) -> Float[Tensor, "batch seq vocab"]:
        """One steered forward pass; returns the logits."""
        iv = self._prepare(batch, intervention) if intervention is not None else None
        box: dict[str, Any] = {}

        def run(**kw: Any) -> Any:
            box["out"] = self.model(**kw)
            return box["out"]

        if self.backend == "hooks":
            with torch.no_grad():
                self._hooked(lambda: run(**self._model_inputs(batch)), iv, list(iv.layers) if iv else [], batch)
        else:
            with torch.no_grad(), self._nn.trace(**self._model_inputs(batch), fn=run):
                if iv is not None:
                    self._step(0, iv, list(iv.layers), batch)
        return box["out"].logits

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
        iv = self._prepare(batch, intervention) if intervention is not None else None
        collect_t = check_layers(list(collect), self.num_layers) if collect else ()
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if pad is not None:
            kw["pad_token_id"] = pad
        kw.update(generate_kwargs)
        kw["return_dict_in_generate"] = True
        if iv is not None and iv.needs_extra_prefill:
            vec = self._predict_extra_prefill(batch, iv)
            iv = Intervention(layers=iv.layers, vectors=vec, alpha=iv.alpha, positions=iv.positions)
        box: dict[str, Any] = {}
        states: dict[int, list[Tensor]] = {layer: [] for layer in collect_t}

        def run(**inputs: Any) -> Any:
            box["out"] = self.model.generate(**inputs)
            return box["out"]

        order = sorted(set(iv.layers if iv else ()) | set(collect_t) | ({iv.source_layer} if iv and iv.predictor else set()))
        record = (lambda layer, h: states[layer].append(h.detach().float().cpu()) if layer in states else None)
        if order and self.backend == "hooks":
            with torch.no_grad():
                self._hooked(lambda: run(**self._gen_inputs(batch), **kw), iv, order, batch,
                             read=record if collect_t else None)
        elif order:
            with warnings.catch_warnings():
                # an early EOS ends the bounded loop before max_new_tokens; that is expected here
                warnings.filterwarnings("ignore", message=".*was never reached.*")
                with torch.no_grad(), self._nn.trace(**self._gen_inputs(batch), fn=run, **kw) as tracer:
                    memo: dict[str, Tensor] = {}
                    for step in tracer.iter[:max_new_tokens]:
                        self._step(step, iv, order, batch, read=record if collect_t else None, memo=memo)
        else:
            with torch.no_grad():
                run(**self._gen_inputs(batch), **kw)
        res = box["out"]
        seqs = res.sequences if hasattr(res, "sequences") else res
        texts = (self.tokenizer.batch_decode(seqs[:, batch.seq_len:], skip_special_tokens=True) if decode else [])
        logits = getattr(res, "logits", None)
        return Generation(sequences=seqs.cpu(), prompt_len=batch.seq_len, texts=texts,
                          logits=[x.cpu() for x in logits] if logits is not None else None,
                          states=states if collect_t else None)

    # ------------------------------------------------------------------ internals ---
    def _prepare(self, batch: Batch, iv: Intervention) -> Intervention:
        if not isinstance(iv, Intervention):
            raise TypeError(f"Expected an Intervention, got {type(iv).__name__}; build one with Intervention.build(...).")
        iv = iv.validate(self.num_layers, self.hidden_size, batch.size)
        if iv.positions.name == "image" and not bool(batch.image_mask.any()):
            raise PositionError("positions='image' but the batch has no image tokens; pass the images with the "
                                "prompts, or steer positions='text' or 'all'.")
        return iv

    def _predict_extra_prefill(self, batch: Batch, iv: Intervention) -> Tensor:
        assert iv.predictor is not None and iv.source_layer is not None
        h = self.read(batch, [iv.source_layer], reduce=iv.source_position)[iv.source_layer]
        return iv.predictor(h.to(self.device))

    def _step(self, step: int, iv: Intervention | None, order: Sequence[int], batch: Batch,
              read: Callable[[int, Tensor], Any] | None = None, memo: dict[str, Tensor] | None = None) -> None:
        """Body of one forward inside a trace: visit layers in order, predict, steer, record.

        Runs inside an nnsight trace with real tensors (nnsight 0.8 executes the body eagerly
        in step with the model), so plain Python control flow is fine here.
        """
        memo = {} if memo is None else memo
        for layer in order:
            env = self._envoys[layer]
            out = env.output
            h = _edit(step, layer, _hidden(out), iv, batch, read, memo)
            if h is not None:
                env.output = _replace(out, h)

    def _hooked(self, fn: Callable[[], Any], iv: Intervention | None, order: Sequence[int], batch: Batch,
                read: Callable[[int, Tensor], Any] | None = None) -> Any:
        """Run ``fn`` with forward hooks doing what :meth:`_step` does in a trace; hooks are removed after."""
        modules = self.adapter.layers(self.model)
        memo: dict[str, Tensor] = {}
        calls = dict.fromkeys(order, 0)

        def hook(layer: int) -> Callable[..., Any]:
            def edit(_m: nn.Module, _inp: Any, out: Any) -> Any:
                step = calls[layer]
                calls[layer] += 1
                h = _edit(step, layer, _hidden(out), iv, batch, read, memo)
                return None if h is None else _replace(out, h)
            return edit

        handles = [modules[layer].register_forward_hook(hook(layer)) for layer in order]
        try:
            return fn()
        finally:
            for handle in handles:
                handle.remove()



def _edit(step: int, layer: int, h: Tensor, iv: Intervention | None, batch: Batch,
          read: Callable[[int, Tensor], Any] | None, memo: dict[str, Tensor]) -> Tensor | None:
    """One layer's work on one forward: predict (L2S, first pass), steer, record.

    Returns the new hidden state, or None when this layer is left as it is. Shared by the nnsight
    trace and the forward-hook backend, so both do the same arithmetic.
    """
    new = None
    if iv is not None and iv.predictor is not None and layer == iv.source_layer and step == 0:
        rows = torch.arange(batch.size, device=h.device)
        pos = batch.last_prompt_index if iv.source_position == "last_prompt" else batch.last_prompt_no_gen_index
        memo["predicted"] = iv.predictor(h[rows, pos.to(h.device)])
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


def _count(tok: Any, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _appended_tokens(tok: Any, text: str, row_ids: Tensor) -> int:
    """How many tokens the processor put after the rendered text's own last tokens (0 usually)."""
    tail = tok(text, add_special_tokens=False)["input_ids"][-3:]
    row = row_ids.tolist()
    for extra in range(0, 4):
        end = len(row) - extra
        if end >= len(tail) and row[end - len(tail):end] == tail:
            return extra
    return 0
