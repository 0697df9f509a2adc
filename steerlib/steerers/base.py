"""The ``Steerer`` protocol: fit on contrastive items, give per-input vectors, steer generate.

Conventions (scikit-learn's): hyperparameters are ``__init__`` arguments stored as is;
``fit`` returns ``self``; learned state lives in attributes ending with ``_``; using a steerer
before ``fit`` raises :class:`~steerlib.errors.NotFittedError`.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..batching import length_batches
from ..data.chat import Chat, Prompt, as_prompt, as_prompts, is_messages
from ..data.items import ContrastiveItem, items_hash
from ..defaults import DEFAULT_MAX_NEW_TOKENS
from ..engine import Batch, Generation, SteerableModel
from ..errors import CompatibilityError, InputError, NotFittedError, PersistenceError, SteerlibError
from ..intervention import Intervention, check_finite, check_layers
from ..persistence import FLOAT_DTYPES, META_FILE, TENSORS_FILE, TensorInfo, check_path, read_steerer_dir, write_dir_atomic
from ..positions import Where, as_positions
from ..progress import tqdm

if TYPE_CHECKING:  # pragma: no cover
    from contextlib import AbstractContextManager as ContextManager

    from ..attach import AttachHandle
    from .extract import P2SExtraction

S = TypeVar("S", bound="Steerer")
TensorShape = tuple[int | None, ...] | None
Inputs = Sequence["ContrastiveItem | Prompt"]
FORMAT_VERSION = 1


def as_items(inputs: Inputs | ContrastiveItem | Prompt) -> list[ContrastiveItem]:
    """Accept items or prompts (one, or a sequence of them); a prompt is a string or a conversation
    (a list of chat messages ``[{"role": ..., "content": ...}]``, rendered with the chat template).

    Raises:
        InputError: anything else (None, a number, bytes, a dict, a nested list, a DataFrame, a
            ``datasets.Dataset``, ...); the message names what was given and what to pass instead.
    """
    if isinstance(inputs, ContrastiveItem):
        return [inputs]
    if isinstance(inputs, Iterator):  # a generator of prompts or items
        inputs = list(inputs)
    if isinstance(inputs, (list, tuple)) and not isinstance(inputs, Chat) and not is_messages(inputs):
        out: list[ContrastiveItem] = []
        for i, x in enumerate(inputs):
            out.append(x if isinstance(x, ContrastiveItem) else ContrastiveItem(prompt=as_prompt(x, f"Input {i}")))
        return out
    return [ContrastiveItem(prompt=p) for p in as_prompts(inputs)]


class Steerer:
    """Base class and protocol of every steering method.

    Subclasses implement :meth:`_fit` and :meth:`vectors` (or :meth:`intervention` for methods
    that do not add a fixed per-row vector), and list their learned tensors in ``_tensors``.

    What generic code (the comparison runner, the demo, the CLI, export) needs to know about a
    method it asks the steerer through this protocol, never by testing its type:

    * ``needs_fit``: whether :meth:`fit` learns from items;
    * ``adds_vectors``: False for methods that never add a vector (layer and alpha are ignored);
    * ``is_unsteered``: True for the unsteered model itself (a valid "unchanged" reference);
    * ``builds_from_params``: False when the hyperparameters alone cannot make one (given vectors);
    * ``vectors_depend_on_alpha``: False when :meth:`vectors` is what :meth:`generate_batch` adds
      and is the same for every alpha, so a runner may compute it once and pass it back with
      ``generate_batch(..., vectors=...)``;
    * :attr:`extraction`: its P2S extraction settings (a frozen value; steerers whose values are
      equal can share one extraction, see :func:`~steerlib.steerers.sharing.fit_sharing_extraction`);
    * :meth:`steered_rows`: the inputs it changes at all (the others run exactly unsteered);
    * :meth:`static_vectors`: its fixed ``{layer: vector}`` for export, or None;
    * :meth:`get_params` / :meth:`set_params` / :meth:`clone`: scikit-learn's contract, so
      ``sklearn.base.clone(steerer)`` works.
    """

    method: ClassVar[str] = "base"
    needs_fit: ClassVar[bool] = True
    adds_vectors: ClassVar[bool] = True
    is_unsteered: ClassVar[bool] = False
    builds_from_params: ClassVar[bool] = True
    vectors_depend_on_alpha: ClassVar[bool] = True
    _tensors: ClassVar[tuple[str, ...]] = ()
    _registry: ClassVar[dict[str, type["Steerer"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method != "base":
            Steerer._registry[cls.method] = cls

    def __init__(self, layer: int = 0, *, alpha: float = 1.0, positions: Where = "all") -> None:
        self.layer = layer
        self.alpha = alpha
        self.positions = positions

    # ------------------------------------------------------------------ params ------
    @classmethod
    def _param_names(cls) -> list[str]:
        """The hyperparameter names: this class's ``__init__`` parameters and, while an ``__init__``
        passes ``**kwargs`` on to its base, the base's too (no ``*args``, as in scikit-learn)."""
        names: list[str] = []
        for klass in cls.__mro__:
            if klass is object or "__init__" not in vars(klass):
                continue
            params = inspect.signature(klass.__init__).parameters.values()
            for p in params:
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names:
                    names.append(p.name)
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The ``__init__`` hyperparameters, as given (JSON-able for the built-in methods).

        ``deep`` is accepted for scikit-learn (no built-in steerer nests estimators)."""
        params = {name: getattr(self, name) for name in self._param_names() if hasattr(self, name)}
        if deep:
            for name, value in list(params.items()):
                if hasattr(value, "get_params") and not isinstance(value, type):
                    params.update({f"{name}__{k}": v for k, v in value.get_params(deep=True).items()})
        return params

    def set_params(self: S, **params: Any) -> S:
        """Set hyperparameters (an unfitted copy is usually what you want: :meth:`clone`); returns ``self``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise InputError(f"{type(self).__name__} has no hyperparameter {name!r}; it has {', '.join(valid)}.")
            setattr(self, name, value)
        return self

    def clone(self: S, **overrides: Any) -> S:
        """A fresh, unfitted copy with the same hyperparameters, ``overrides`` applied."""
        params = self.get_params(deep=False)
        unknown = sorted(set(overrides) - set(self._param_names()))
        if unknown:
            raise InputError(f"{type(self).__name__} has no hyperparameter(s) {unknown}; it has "
                             f"{', '.join(self._param_names())}.")
        params.update(overrides)
        return type(self)(**copy.deepcopy(params))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ arithmetic --
    # ``a + 0.5 * b``, ``a - b``, ``-a``: the registered "compose" method's combine rules (static
    # operands give a StaticVectors, others a Composite; see steerlib.steerers.compose).
    def __mul__(self, k: float) -> "Steerer":
        return Steerer._registry["compose"].scaled(self, k)  # type: ignore[attr-defined,no-any-return]

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> "Steerer":
        return self * (1.0 / k)

    def __neg__(self) -> "Steerer":
        return self * -1.0

    def __add__(self, other: "Steerer") -> "Steerer":
        return Steerer._registry["compose"].added(self, other)  # type: ignore[attr-defined,no-any-return]

    def __radd__(self, other: Any) -> "Steerer":
        return self if isinstance(other, int) and other == 0 else NotImplemented  # sum([a, b]) starts at 0

    def __sub__(self, other: "Steerer") -> "Steerer":
        return self + (-other)

    # ------------------------------------------------------------------ protocol ----
    @property
    def extraction(self) -> "P2SExtraction | None":
        """The P2S extraction settings this steerer fits from (None: it fits from no shared extraction)."""
        return None

    def steered_rows(self, model: SteerableModel, items: Inputs) -> list[int]:
        """Indices of the inputs this steerer changes at all (default: every one).

        An input left out runs exactly as the unsteered model, so a runner may take its output
        from an unsteered run instead of generating it again."""
        return list(range(len(as_items(items))))

    def static_vectors(self) -> dict[int, Float[Tensor, " d_model"]] | None:
        """The same-for-every-input ``{layer: vector}`` (before alpha) for export, or None when the
        vectors depend on the input or there are none."""
        return None

    def _resolve(self, alpha: float | None, positions: Where | None) -> tuple[float, Where]:
        """The call's alpha and positions, or this steerer's defaults."""
        return (self.alpha if alpha is None else alpha), (self.positions if positions is None else positions)

    def _check_params(self, model: SteerableModel) -> None:
        """Validate the hyperparameters against ``model`` (called by :meth:`fit`; subclasses extend)."""
        self._check_settings()
        check_layers(self.layer, model.num_layers)
        as_positions(self.positions)
        check_finite(self.alpha, "alpha")

    def _check_settings(self) -> None:
        """Validate the hyperparameters that need no model: types, ranges, choices; every failure a
        :class:`~steerlib.errors.ParameterError` naming the parameter (called by :meth:`fit` and
        on load; subclasses extend with their own)."""
        check_finite(self.alpha, "alpha")
        as_positions(self.positions)

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, TensorShape]:
        """The tensors a fitted steerer of these hyperparameters saves, by name: each one's shape
        (``None`` for a dimension, or for the whole shape, that the hyperparameters do not fix), for a
        model of ``hidden_size`` and ``num_layers``. A saved folder is checked against it from the
        safetensors header before any tensor is read; methods with tensors override it."""
        return {name: None for name in self._tensors}

    # ------------------------------------------------------------------ fitting -----
    def fit(self: S, model: SteerableModel, items: Sequence[ContrastiveItem]) -> S:
        """Learn from contrastive items (scikit-learn's ``fit``: the model is the context, the items are ``X``).

        Args:
            model: the model to steer; its hidden size and layer count are recorded, and a later
                :meth:`generate` or :meth:`from_pretrained` refuses a model that differs.
            items: the training set, one :class:`~steerlib.data.ContrastiveItem` each (a prompt,
                a desired and an undesired completion, a behaviour label). Methods that learn
                nothing (``needs_fit`` False: no steering, prompting, given vectors) accept ``[]``.

        Returns:
            ``self``, fitted (``is_fitted`` is True; learned attributes end in ``_``).

        Raises:
            DataError: an item is not a ``ContrastiveItem``, or no item has the labels the method needs.
            LayerIndexError: ``layer`` is outside ``0 .. model.num_layers - 1``.

        Example:
            ```python
            from steerlib import MeanSteer, demo_items, load_steerable

            model = load_steerable("smollm2")
            mean = MeanSteer(layer=15, behaviors=["harmful", "advice"]).fit(model, demo_items()["train"])
            ```
        """
        self._check_params(model)
        items = list(items)
        self._fit(model, items)
        self._record_fit(model, items)
        return self

    def _record_fit(self, model: SteerableModel, items: Sequence[ContrastiveItem]) -> None:
        self.model_info_ = model_info(model)
        self.n_items_ = len(items)
        self.items_hash_ = items_hash(items) if items else ""

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        raise NotImplementedError

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "model_info_")

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call .fit(model, items) or load one with "
                "Steerer.from_pretrained(path) first."
            )

    def check_model(self, model: SteerableModel) -> None:
        """Refuse a model whose hidden size or layer count differs from the one fitted on."""
        self.check_fitted()
        check_compatible(self.model_info_, model)

    # ------------------------------------------------------------------ applying ----
    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        """One steering vector per input, before ``alpha`` (what :meth:`generate` adds, times ``alpha``).

        Args:
            model: the model the steerer was fitted on.
            items: prompts (strings) or :class:`~steerlib.data.ContrastiveItem` s.

        Returns:
            A float tensor ``[len(items), model.hidden_size]``: the same row for every input for
            static methods (Mean-S), each input's own vector for input-dependent ones (P2S, L2S;
            a zero row for an input L2S's gate leaves unsteered).

        Example:
            ```python
            v = l2s.vectors(model, ["How do I pick a lock?", "Give me a recipe for pancakes."])
            v.shape, v.norm(dim=-1)  # torch.Size([2, 576]); the benign row's norm is 0 when gated
            ```
        """
        raise NotImplementedError

    def prepare_prompts(self, items: list[ContrastiveItem]) -> list[ContrastiveItem]:
        """Hook for methods that edit the prompt (the Prompt baseline)."""
        return items

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None,
                     vectors: Float[Tensor, "batch d_model"] | None = None) -> Intervention | None:
        """How to steer these items (None: no steering).

        ``vectors``: per-row vectors already computed with :meth:`vectors` (a runner reusing them
        across alphas); ``batch``: the encoded batch, a seam for methods that need it (none does)."""
        a, pos = self._resolve(alpha, positions)
        v = self.vectors(model, items) if vectors is None else vectors
        return Intervention.build(self.layer, v, alpha=a, positions=pos)

    def generate_batch(self, model: SteerableModel, items: Inputs, *, alpha: float | None = None,
                       positions: Where | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                       vectors: Float[Tensor, "batch d_model"] | None = None, **generate_kwargs: Any) -> Generation:
        """Steer one batch and return the raw :class:`~steerlib.engine.Generation`.

        ``vectors``: this batch's vectors from :meth:`vectors`, reused instead of computed again
        (only meaningful when ``vectors_depend_on_alpha`` is False)."""
        self.check_model(model)
        items = self.prepare_prompts(as_items(items))
        images = [list(it.images) for it in items]
        batch = model.encode([it.prompt for it in items], images if any(images) else None)
        iv = self.intervention(model, items, batch, alpha=alpha, positions=positions, vectors=vectors)
        return model.generate(batch, iv, max_new_tokens=max_new_tokens, **generate_kwargs)

    def generate(self, model: SteerableModel, inputs: Inputs | ContrastiveItem | str, *, alpha: float | None = None,
                 positions: Where | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 8,
                 max_batch_tokens: int | None = None, progress: bool = True, **generate_kwargs: Any) -> list[str]:
        """Steered generation for many inputs, batched with per-row vectors; returns the texts in input order.

        Rows are grouped by prompt length (:func:`~steerlib.batching.length_batches`): at most
        ``batch_size`` rows per batch and, with ``max_batch_tokens``, at most that many padded
        prompt tokens, so short prompts share large batches.

        Args:
            model: the model the steerer was fitted on (a different shape is refused).
            inputs: a prompt, a list of prompts, or :class:`~steerlib.data.ContrastiveItem` s
                (with images for a VLM). Anything else (dicts, message lists, a DataFrame) is refused.
            alpha: the strength (default: the steerer's ``alpha``).
            positions: where to add the vector (:data:`~steerlib.positions.Where`; default the steerer's).
            max_new_tokens: tokens to generate per input.
            batch_size: most rows per batch.
            max_batch_tokens: most padded prompt tokens per batch (None: no limit).
            progress: show a tqdm bar over the batches.
            **generate_kwargs: passed to Hugging Face ``generate``; decoding is greedy
                (``do_sample=False``) unless you pass ``do_sample=True``.

        Returns:
            The generated texts (without the prompt), one per input, in input order.

        Example:
            ```python
            steered = l2s.generate(model, ["How do I pick a lock?"], alpha=0.75, max_new_tokens=32)
            plain = NoSteer().fit(model, []).generate(model, ["How do I pick a lock?"], max_new_tokens=32)
            ```
        """
        return self.generate_tokens(model, inputs, alpha=alpha, positions=positions, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, max_batch_tokens=max_batch_tokens, progress=progress,
                                    **generate_kwargs)[0]

    def generate_tokens(self, model: SteerableModel, inputs: Inputs | ContrastiveItem | str, *,
                        alpha: float | None = None, positions: Where | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                        batch_size: int = 8, max_batch_tokens: int | None = None, progress: bool = True,
                        desc: str | None = None, **generate_kwargs: Any) -> tuple[list[str], list[list[int]]]:
        """:meth:`generate`, also returning each row's new token ids (in input order)."""
        items = as_items(inputs)
        lengths = model.prompt_lengths([it.prompt for it in items], [len(it.images) for it in items])
        texts = [""] * len(items)
        tokens: list[list[int]] = [[] for _ in items]
        batches = length_batches(lengths, batch_size, max_batch_tokens)
        for idx in tqdm(batches, desc=desc or f"generate {self.method}", unit="batch",
                        disable=not progress or len(batches) < 2, leave=False):
            g = self.generate_batch(model, [items[i] for i in idx], alpha=alpha, positions=positions,
                                    max_new_tokens=max_new_tokens, **generate_kwargs)
            for i, text, row in zip(idx, g.texts, g.new_tokens, strict=True):
                texts[i], tokens[i] = text, row.tolist()
        return texts, tokens

    # ------------------------------------------------------------------ persistence -
    def state_tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self._tensors}

    def extra_state(self) -> dict[str, Any]:
        """JSON-able learned state beyond tensors (subclasses extend)."""
        return {}

    def load_extra_state(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        for name in self._tensors:
            setattr(self, name, tensors[name])

    def save_pretrained(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                        metrics: dict[str, float] | None = None, datasets: Sequence[str] | None = None,
                        license: str | None = None) -> Path:
        """Write ``steerer.json`` (metadata), ``steerer.safetensors`` and a model card (``README.md``), atomically.

        Args:
            path: the folder to write (files get the user's umask, like any other file).
            overwrite: replace an existing folder.
            metrics: name -> value shown in the model card (e.g. the demo's or ``compare``'s measurements).
            datasets: Hub ids (or names) of the training data, for the card's metadata.
            license: the card's licence (e.g. the base model's, ``"apache-2.0"``).

        Returns:
            The folder written.

        Raises:
            NotFittedError: the steerer is not fitted.
            PersistenceError: ``path`` exists and ``overwrite`` is False (nothing is changed).

        Example:
            ```python
            l2s.save_pretrained("runs/l2s-L15", overwrite=True)
            again = Steerer.from_pretrained("runs/l2s-L15", model=model)
            ```
        """
        self.check_fitted()
        from ..version import __version__

        meta = {
            "format_version": FORMAT_VERSION,
            "library": "steerlib",
            "library_version": __version__,
            "method": self.method,
            "class": type(self).__name__,
            "params": self.get_params(deep=False),
            "layer": self.layer,
            "alpha": self.alpha,
            "positions": self.positions,
            "model": self.model_info_,
            "n_items": self.n_items_,
            "items_sha256": self.items_hash_,
            "state": self.extra_state(),
        }
        tensors = self.state_tensors() or {"_empty": torch.zeros(0)}
        for name, t in tensors.items():  # a folder that could not be loaded back is refused here
            check_finite(t.detach(), f"{type(self).__name__}'s learned tensor {name!r} (not saved)")
        card = model_card(meta, metrics=metrics, datasets=datasets, license=license)
        return write_dir_atomic(path, {META_FILE: meta, TENSORS_FILE: tensors, "README.md": card.encode()},
                                overwrite=overwrite)

    def save(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """The same as :meth:`save_pretrained`."""
        return self.save_pretrained(path, **kwargs)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, commit_message: str | None = None,
                    revision: str | None = None, token: str | None = None, **save_kwargs: Any) -> Any:
        """Save this steerer (:meth:`save_pretrained`) and upload the folder to the Hugging Face Hub
        through ``huggingface_hub.HfApi`` (``create_repo(exist_ok=True)``, then ``upload_folder``).

        Returns:
            ``upload_folder``'s commit info.
        """
        import tempfile

        from huggingface_hub import HfApi

        self.check_fitted()
        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="steerlib-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "steerer", **save_kwargs)
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                                     commit_message=commit_message or f"Upload {type(self).__name__} steerer (steerlib)")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], model: SteerableModel | None = None, *,
                        revision: str | None = None) -> "Steerer":
        """Load any saved steerer from a folder or a Hugging Face Hub repo id (``"user/steerer"``, through
        ``huggingface_hub.snapshot_download`` at ``revision``; ``HF_HUB_OFFLINE=1`` reads the local HF cache only).

        With ``model``, check it fits: a different type, hidden size or layer count refuses; another
        repo id or commit of the same shape warns.

        Args:
            path: a folder written by :meth:`save_pretrained` (or ``steerlib fit``), or a Hub repo id.
            model: the model it will steer, checked against the one it was fitted on.
            revision: a Hub branch, tag or commit (repo ids only).

        Returns:
            The steerer, fitted, of the class it was saved as (``Steerer.from_pretrained`` works for
            every method; ``L2S.from_pretrained`` refuses a folder holding another method).

        Raises:
            PersistenceError: no saved steerer there, a corrupt folder, or another method's folder.
            CompatibilityError: saved by a newer format, or ``model`` has another shape.

        Example:
            ```python
            from steerlib import Steerer

            l2s = Steerer.from_pretrained("runs/l2s-quickstart", model=model)
            ```
        """
        path = check_path(resolve_steerer_path(path, revision), "steerer folder")
        built: list[Steerer] = []

        def check(meta: dict[str, Any], header: dict[str, TensorInfo]) -> None:
            # everything in steerer.json, then the tensors' header, before any tensor byte is read
            obj = klass_from_meta(cls, meta, path)
            if model is not None:
                obj.check_model(model)
                check_layers(obj.layer, model.num_layers)
            obj._check_header(header, path)
            built.append(obj)

        meta, tensors = read_steerer_dir(path, root=_hub_root(path), check=check)
        obj = built[0]
        try:
            state = meta.get("state", {})
            obj.load_extra_state(state if isinstance(state, dict) else {}, tensors)
        except SteerlibError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise PersistenceError(
                f"{path} is corrupt: its steerer.json and steerer.safetensors do not describe a {type(obj).__name__} "
                f"({type(e).__name__}: {e}). Save the steerer again with save_pretrained."
            ) from e
        if model is not None:
            warn_on_provenance(obj.model_info_, model, path)
        return obj

    # ------------------------------------------------------------------ attaching ---
    def attach(self, model: Any, processor: Any = None, *, alpha: float | None = None,
               positions: Where | None = None) -> "AttachHandle":
        """Steer every later call of a plain Hugging Face model (``model.generate``, ``model(...)``,
        ``pipeline(...)``, a streamer) until ``handle.remove()``.

        Args:
            model: the Hugging Face model (or a :class:`~steerlib.engine.SteerableModel`).
            processor: its tokenizer or processor (loaded from the model's name when omitted).
            alpha: the strength (default: this steerer's).
            positions: where to steer (default: this steerer's).

        Returns:
            An :class:`~steerlib.attach.AttachHandle`; see :mod:`steerlib.attach`.

        Example:
            >>> handle = steerer.attach(model, tokenizer, alpha=0.5)  # doctest: +SKIP
            >>> model.generate(**tokenizer(["Hi"], return_tensors="pt"))  # doctest: +SKIP
            >>> handle.remove()  # doctest: +SKIP
        """
        from ..attach import attach

        return attach(self, model, processor, alpha=alpha, positions=positions)

    def attached(self, model: Any, processor: Any = None, *, alpha: float | None = None,
                 positions: Where | None = None) -> "ContextManager[AttachHandle]":
        """``with steerer.attached(model, tokenizer, alpha=0.5):``: :meth:`attach` for the block; the
        hooks are removed when it ends, also when it raises.

        Args:
            model: the Hugging Face model (or a :class:`~steerlib.engine.SteerableModel`).
            processor: its tokenizer or processor (loaded from the model's name when omitted).
            alpha: the strength (default: this steerer's).
            positions: where to steer (default: this steerer's).

        Returns:
            A context manager giving the :class:`~steerlib.attach.AttachHandle`.

        Example:
            >>> with steerer.attached(model, tokenizer, alpha=0.5):  # doctest: +SKIP
            ...     out = pipeline("text-generation", model=model, tokenizer=tokenizer)(messages)
        """
        from ..attach import attached

        return attached(self, model, processor, alpha=alpha, positions=positions)

    def _check_header(self, header: dict[str, TensorInfo], path: object) -> None:
        """Refuse a saved tensor file whose names, dtypes or shapes are not what
        :meth:`expected_tensors` says these hyperparameters and this model give."""
        info = self.model_info_
        expected = self.expected_tensors(info["hidden_size"], info.get("num_layers")) or {"_empty": (0,)}
        if set(header) != set(expected):
            raise PersistenceError(
                f"{path} is corrupt: its steerer.json and steerer.safetensors do not describe a {type(self).__name__} "
                f"(the tensor file holds {sorted(header)}, a {type(self).__name__} saves {sorted(expected)}). "
                "Save the steerer again with save_pretrained.")
        for name, want in expected.items():
            got = header[name]
            if got.dtype not in FLOAT_DTYPES:
                raise PersistenceError(
                    f"{path} is corrupt: its steerer.json and steerer.safetensors do not describe a "
                    f"{type(self).__name__} (tensor {name!r} has dtype {got.dtype}; it saves floating tensors, "
                    f"{', '.join(FLOAT_DTYPES)}). Save the steerer again with save_pretrained.")
            if want is not None and (len(got.shape) != len(want)
                                     or any(w is not None and w != g for w, g in zip(want, got.shape))):
                shown = "[" + ", ".join("*" if w is None else str(w) for w in want) + "]"
                raise CompatibilityError(
                    f"{path}: tensor {name!r} has shape {list(got.shape)}, but a {type(self).__name__} with these "
                    f"settings on a model of hidden size {info['hidden_size']} has {shown}; the folder is corrupt or "
                    "was made for another model. Fit the steerer on this model and save it again.")


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def klass_from_meta(cls: type[Steerer], meta: dict[str, Any], path: object) -> Steerer:
    """The unfitted-then-described steerer that ``steerer.json`` names, its settings and model
    record checked (no tensors yet); every problem a :class:`PersistenceError` naming ``path``."""
    if meta.get("library") != "steerlib" or "method" not in meta:
        raise PersistenceError(f"{path} was not written by steerlib's save_pretrained (no library/method "
                               "in steerer.json); save the steerer with save_pretrained.")
    fmt = meta.get("format_version", 0)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise PersistenceError(f"{path}: steerer.json has an invalid format_version {fmt!r}; the folder is "
                               "corrupt, save the steerer again.")
    if fmt > FORMAT_VERSION:
        raise CompatibilityError(
            f"{path} was saved by steerlib {meta.get('library_version')} (format {fmt}); "
            f"this version reads format <= {FORMAT_VERSION}. Upgrade steerlib."
        )
    klass = Steerer._registry.get(meta["method"]) if isinstance(meta["method"], str) else None
    if klass is None:
        raise PersistenceError(f"{path} holds an unknown steering method {meta['method']!r}; known methods: "
                               f"{', '.join(sorted(Steerer._registry))}. Upgrade steerlib or check the folder.")
    if cls is not Steerer and not issubclass(klass, cls):
        raise PersistenceError(f"{path} holds a {klass.__name__}, not a {cls.__name__}; load it with "
                               f"{klass.__name__}.from_pretrained or Steerer.from_pretrained.")
    try:
        if not isinstance(meta["params"], dict) or not isinstance(meta["model"], dict):
            raise TypeError("'params' and 'model' must be JSON objects")
        info = meta["model"]
        if not _positive_int(info.get("hidden_size")) or not (info.get("num_layers") is None
                                                               or _positive_int(info.get("num_layers"))):
            raise ValueError(f"the model record's hidden_size {info.get('hidden_size')!r} and num_layers "
                             f"{info.get('num_layers')!r} must be positive integers")
        obj = klass(**meta["params"])
        obj.model_info_ = info
        obj.n_items_ = meta["n_items"]
        obj.items_hash_ = meta["items_sha256"]
        if not isinstance(obj.n_items_, int) or isinstance(obj.n_items_, bool) or obj.n_items_ < 0 \
                or not isinstance(obj.items_hash_, str):
            raise ValueError("n_items must be a non-negative integer and items_sha256 a string")
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        if isinstance(e, SteerlibError):
            raise PersistenceError(f"{path}: steerer.json holds invalid settings ({e}); the folder is corrupt, "
                                   "save the steerer again.") from e
        raise PersistenceError(
            f"{path} is corrupt: its steerer.json does not describe a {klass.__name__} "
            f"({type(e).__name__}: {e}). Save the steerer again with save_pretrained."
        ) from e
    try:
        obj._check_settings()
        check_layers(obj.layer, info["num_layers"] if info.get("num_layers") else 2**31)
    except SteerlibError as e:
        raise PersistenceError(f"{path}: steerer.json holds invalid settings ({e}); the folder is corrupt, "
                               "save the steerer again.") from e
    return obj


def _hub_root(path: Path) -> Path:
    """Where a saved folder's symlinks may point: the folder itself, or, for a Hugging Face cache
    snapshot (``models--owner--name/snapshots/<commit>``, whose files link to ``../../blobs``), the
    repo's cache folder."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return real


def resolve_steerer_path(path: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local folder as is; a Hub repo id (not an existing path) downloaded with ``snapshot_download``."""
    local = Path(path).expanduser()
    repo = None if local.exists() else hub_repo_id(str(path))
    if repo is None:
        if revision is not None and local.exists():
            raise InputError(f"revision={revision!r} applies to a Hub repo id, but {path} is a local folder.")
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id=repo, revision=revision, repo_type="model",
                                      allow_patterns=[META_FILE, TENSORS_FILE, "README.md"]))
    except LocalEntryNotFoundError as e:
        raise PersistenceError(f"No saved steerer at {path}: not a local folder, and the Hub repo {repo!r} "
                               f"(revision {revision or 'main'}) is not in the local Hugging Face cache while "
                               "HF_HUB_OFFLINE is set (or the Hub cannot be reached). Download it once online, "
                               "or give the folder written by save_pretrained.") from e
    except (RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError) as e:
        raise PersistenceError(f"No saved steerer at {path}: the Hub repo {repo!r} (revision {revision or 'main'}) "
                               f"could not be read ({type(e).__name__}). Check the id and revision, or log in "
                               "(huggingface-cli login) for a private repo.") from e


def hub_repo_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hugging Face Hub repo id (``owner/name``) and is not a local
    path; else None."""
    if not name or not isinstance(name, str):
        return None
    import re

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", name) or ".." in name:
        return None
    return None if Path(name).expanduser().exists() else name


def model_info(model: SteerableModel) -> dict[str, Any]:
    """What a saved steerer records about its base model: shapes (checked on load) and provenance
    (the hub repo id and commit hash when known; a mismatch on load warns). Never a local path:
    a model loaded from a folder is named by the folder's last part."""
    cfg = model.model.config
    repo = hub_repo_id(model.name)
    name = repo or (Path(model.name.rstrip("/")).name or model.model_type)
    commit = getattr(cfg, "_commit_hash", None)
    return {"model_type": model.model_type, "name": name, "family": model.adapter.family,
            "hidden_size": model.hidden_size, "num_layers": model.num_layers, "repo_id": repo,
            "commit_hash": commit if isinstance(commit, str) else None}


def warn_on_provenance(info: dict[str, Any], model: SteerableModel, where: object) -> None:
    """Warn when a steerer was fitted on another checkpoint of the same shape (repo id or commit differs)."""
    import warnings

    now = model_info(model)
    for key in ("repo_id", "commit_hash"):
        old, new = info.get(key), now.get(key)
        if old and new and old != new:
            warnings.warn(f"{where} was fitted on {key} {old!r}, this model has {new!r}: same shapes, but the "
                          "vectors may not transfer between checkpoints; refit it on this model if results look off.",
                          UserWarning, stacklevel=3)


def check_compatible(info: dict[str, Any], model: SteerableModel) -> None:
    """Raise :class:`CompatibilityError` when a fitted steerer does not fit ``model``."""
    if info.get("hidden_size") != model.hidden_size:
        raise CompatibilityError(
            f"Hidden-size mismatch: the steerer was fitted on {info.get('name')!r} (hidden size "
            f"{info.get('hidden_size')}), but this model's hidden size is {model.hidden_size}. Fit it on this model."
        )
    if info.get("num_layers") != model.num_layers:
        raise CompatibilityError(
            f"Layer-count mismatch: the steerer was fitted on a {info.get('num_layers')}-layer model "
            f"({info.get('name')!r}), this one has {model.num_layers} layers. Fit it on this model."
        )
    if info.get("model_type") != model.model_type:
        raise CompatibilityError(
            f"Model-type mismatch: the steerer was fitted on model_type {info.get('model_type')!r}, this model is "
            f"{model.model_type!r}. Vectors do not transfer between architectures; fit it on this model."
        )


def model_card(meta: dict[str, Any], *, metrics: dict[str, float] | None = None,
               datasets: Sequence[str] | None = None, license: str | None = None) -> str:
    """The ``README.md`` of a saved folder, built with ``huggingface_hub.ModelCard`` / ``ModelCardData``
    (valid Hub metadata). ``base_model`` is the base model's repo id when known, never a local path;
    ``metrics`` (name -> value, e.g. from ``compare`` or the demo) go into the card's metadata."""
    from huggingface_hub import ModelCard, ModelCardData

    m = meta["model"]
    p = meta["params"]
    repo = m.get("repo_id") or hub_repo_id(m.get("name"))
    name = repo or m.get("name")
    extra = {"steerlib_metrics": {str(k): float(v) for k, v in metrics.items()}} if metrics else {}
    data = ModelCardData(library_name="steerlib", tags=["steering", "activation-steering", str(meta["method"])],
                         base_model=repo, license=license, datasets=list(datasets) if datasets else None, **extra)
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(p.items()))
    load = (f'from transformers import AutoModelForCausalLM, AutoTokenizer\n'
            f'from steerlib import SteerableModel, Steerer\n'
            f'sm = SteerableModel(AutoModelForCausalLM.from_pretrained("{repo}"), AutoTokenizer.from_pretrained("{repo}"))\n'
            if repo else
            'from steerlib import SteerableModel, Steerer\n'
            'sm = SteerableModel(model, tokenizer)   # the base model this steerer was fitted on\n')
    metric_lines = ("\n".join(f"| {k} | {v:.3g} |" for k, v in metrics.items()) if metrics else "")
    results = f"\n## Results\n\n| metric | value |\n|---|---|\n{metric_lines}\n" if metrics else ""
    content = f"""---
{data.to_yaml()}
---

# {meta['class']} steerer for `{name}`

A steering module made with steerlib {meta['library_version']}:
method **{meta['method']}**, added at layer **{meta['layer']}** (output of decoder block {meta['layer']}) with
default strength **alpha = {meta['alpha']}** at positions **{meta['positions']}**.

- model type `{m.get('model_type')}`, family `{m.get('family')}`, hidden size {m.get('hidden_size')}, {m.get('num_layers')} layers
- fitted on {meta['n_items']} contrastive items (sha256 `{meta['items_sha256'][:16]}…`)
{results}
```python
{load}steerer = Steerer.from_pretrained("path/or/repo-id/of/this/steerer", model=sm)
print(steerer.generate(sm, ["Your prompt"]))
```

| hyperparameter | value |
|---|---|
{rows}

Files: `steerer.json` (metadata), `steerer.safetensors` (tensors). No pickle.
"""
    return str(ModelCard(content))
