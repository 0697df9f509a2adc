"""What to add: vectors (or a predictor of vectors), a strength, layers and positions."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Union

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import LayerIndexError, NonFiniteError, PositionError, ShapeMismatchError
from .positions import SOURCE_POSITIONS, Positions, PositionsLike, SourcePosition, as_positions

VectorLike = Union[Float[Tensor, "batch d_model"], Float[Tensor, " d_model"]]
Predictor = Callable[[Float[Tensor, "batch d_model"]], Float[Tensor, "batch d_model"]]


def check_layers(layers: int | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Validate layer indices (``i`` = output of decoder block ``i``) and return them sorted."""
    if isinstance(layers, (bool, numbers.Integral, str, bytes, Tensor)) or not isinstance(layers, Iterable):
        layers = [layers]  # type: ignore[list-item]
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise LayerIndexError(
                f"Layer index {layer!r} ({type(layer).__name__}) is not an integer; layers are 0-based ints, "
                f"use 0..{num_layers - 1}."
            )
        layer = int(layer)
        if layer < 0:
            raise LayerIndexError(
                f"Layer {layer} is negative: steerlib does not count layers from the end. Use 0..{num_layers - 1} "
                f"(e.g. {num_layers - 1} for the last of this model's {num_layers} decoder layers)."
            )
        if layer >= num_layers:
            raise LayerIndexError(
                f"Layer {layer} is out of range: this model has {num_layers} decoder layers, "
                f"so use 0..{num_layers - 1} (layer i is the output of decoder block i, HF hidden_states[i+1])."
            )
        out.append(layer)
    if not out:
        raise LayerIndexError("No layer given: pass at least one layer index.")
    return tuple(sorted(set(out)))


def check_finite(x: Tensor | float, what: str) -> None:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or infinity."""
    if isinstance(x, Tensor):
        if not torch.isfinite(x).all():
            raise NonFiniteError(f"{what} contains NaN or infinite values; check how it was computed.")
    else:
        try:
            ok = not isinstance(x, (str, bytes)) and math.isfinite(float(x))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise NonFiniteError(f"{what} must be a finite number, got {x!r}; pass a real number such as 1.0.")


def check_scaled_finite(v: Tensor, alpha: float, dtype: torch.dtype, what: str) -> None:
    """Refuse ``alpha * v`` that does not fit ``dtype`` (the dtype the model adds it in): ``alpha``
    itself and ``|alpha| * ||v||`` (per row) must be below the dtype's largest finite value.

    The product is computed in float64, so ``alpha = 1e39`` with float32 hidden states (largest
    3.4e38) is refused here instead of turning the hidden state into infinities."""
    if not dtype.is_floating_point:
        return
    big = torch.finfo(dtype).max
    a = abs(float(alpha))
    norm = float(v.detach().double().norm(dim=-1).max()) if v.numel() else 0.0
    if a > big:
        raise NonFiniteError(f"alpha = {alpha!r} is more than {dtype} (the model's hidden states) can hold (largest "
                             f"{big:.4g}): the steered hidden state would be infinite. Use a smaller alpha.")
    if a * norm > big or not math.isfinite(a * norm):
        raise NonFiniteError(
            f"alpha = {alpha!r} times {what}'s norm ({norm:.4g}) is {a * norm:.4g}, more than {dtype} can hold "
            f"(largest {big:.4g}): the steered hidden state would be infinite. Use a smaller alpha (or run the "
            "model in a wider dtype).")


@dataclass(frozen=True)
class Intervention:
    """Add ``alpha * v`` to the output of each layer in ``layers`` at ``positions``.

    ``vectors`` is one vector for all rows (``[d_model]``), one per row (``[batch, d_model]``), or a
    mapping ``layer -> vector`` for different vectors per layer. Instead of vectors, a
    ``predictor`` (e.g. L2S's g) maps the hidden state at ``source_layer`` / ``source_position``
    to per-row vectors; the engine computes it inside the same pass when ``source_layer`` is at or
    below every steered layer, and with one extra prefill otherwise.

    Directional ablation: ``ablate`` maps a layer to directions (each ``[d_model]`` or one per row
    ``[batch, d_model]``, normalised here); at that layer, at ``positions``, the component of the
    hidden state along each direction is removed in turn, *before* any vector is added. With
    ``ablate``, ``vectors`` may be None (ablation only) or a mapping whose layers, together with
    the ablated ones, are ``layers``; a predictor is refused (compute its vectors first).
    ``norm_preserving``: after ablating and adding, each steered token is rescaled to the norm it
    had before this layer's edit. Without either option the arithmetic is the plain addition.
    """

    layers: tuple[int, ...]
    vectors: VectorLike | Mapping[int, VectorLike] | None = None
    alpha: float = 1.0
    positions: Positions = field(default_factory=Positions)
    predictor: Predictor | None = None
    source_layer: int | None = None
    source_position: SourcePosition = "last_prompt"
    ablate: Mapping[int, tuple[VectorLike, ...]] | None = None
    norm_preserving: bool = False

    @classmethod
    def build(
        cls,
        layers: int | Sequence[int],
        vectors: VectorLike | Mapping[int, VectorLike] | None = None,
        *,
        alpha: float = 1.0,
        positions: PositionsLike = "all",
        predictor: Predictor | None = None,
        source_layer: int | None = None,
        source_position: SourcePosition = "last_prompt",
        ablate: Mapping[int, VectorLike | Sequence[VectorLike]] | None = None,
        norm_preserving: bool = False,
    ) -> "Intervention":
        ls = tuple(layers) if isinstance(layers, Iterable) and not isinstance(layers, (str, bytes, Tensor)) else (layers,)
        abl = None if ablate is None else {
            k: (tuple(d) if not isinstance(d, Tensor) else (d,)) for k, d in ablate.items()}
        return cls(layers=ls, vectors=vectors, alpha=alpha, positions=as_positions(positions),
                   predictor=predictor, source_layer=source_layer, source_position=source_position,
                   ablate=abl, norm_preserving=bool(norm_preserving))

    def validate(self, num_layers: int, hidden_size: int, batch_size: int,
                 dtype: torch.dtype | None = None) -> "Intervention":
        """Check every field against a model and a batch; return a copy with sorted layers.

        ``dtype``: the hidden states' dtype; ``alpha`` times each vector's norm must be finite in it."""
        layers = check_layers(self.layers, num_layers)
        check_finite(self.alpha, "alpha")
        if dtype is not None:
            check_scaled_finite(torch.zeros(0), self.alpha, dtype, "the steering vector")
            vecs = self.vectors if isinstance(self.vectors, Mapping) else (
                {} if self.vectors is None else {layers[0]: self.vectors})
            for layer, v in vecs.items():
                if isinstance(v, Tensor) and v.is_floating_point() and bool(torch.isfinite(v).all()):
                    check_scaled_finite(v, self.alpha, dtype, f"the steering vector for layer {layer}")
        if self.ablate is not None:
            if self.predictor is not None:
                raise ShapeMismatchError(
                    "An Intervention with ablate= takes vectors= (or none), not a predictor=; compute the "
                    "predictor's per-row vectors first (e.g. steerer.vectors(model, items)) and pass them.")
            ablate = self._checked_ablate(layers, hidden_size, batch_size)
            return replace(self, layers=layers, alpha=float(self.alpha), positions=as_positions(self.positions),
                           ablate=ablate, norm_preserving=bool(self.norm_preserving))
        if (self.vectors is None) == (self.predictor is None):
            raise ShapeMismatchError("Give exactly one of vectors= or predictor= to an Intervention.")
        if self.predictor is not None:
            if self.source_layer is None:
                raise LayerIndexError("A predictor needs source_layer= (the layer its input is read from).")
            check_layers(self.source_layer, num_layers)
            if self.source_position not in SOURCE_POSITIONS:
                raise PositionError(
                    f"Unknown source_position {self.source_position!r}; use one of {', '.join(SOURCE_POSITIONS)}."
                )
        else:
            vecs = self.vectors if isinstance(self.vectors, Mapping) else {layer: self.vectors for layer in layers}
            if isinstance(self.vectors, Mapping) and set(vecs) != set(layers):
                raise LayerIndexError(
                    f"vectors are given for layers {sorted(vecs)} but the intervention steers {list(layers)}."
                )
            for layer, v in vecs.items():
                check_vector(v, hidden_size, batch_size, f"the steering vector for layer {layer}")
        return Intervention(layers=layers, vectors=self.vectors, alpha=float(self.alpha),
                            positions=as_positions(self.positions), predictor=self.predictor,
                            source_layer=self.source_layer, source_position=self.source_position,
                            norm_preserving=bool(self.norm_preserving))

    def _checked_ablate(self, layers: tuple[int, ...], hidden_size: int,
                        batch_size: int) -> dict[int, tuple[Tensor, ...]]:
        """Validate ``ablate`` (and ``vectors`` beside it); return unit directions per layer."""
        assert self.ablate is not None
        if not isinstance(self.ablate, Mapping):
            raise ShapeMismatchError("ablate= must be a mapping {layer: direction(s)}.")
        add_layers: set[int] = set()
        if isinstance(self.vectors, Mapping):
            add_layers = set(self.vectors)
            for layer, v in self.vectors.items():
                check_vector(v, hidden_size, batch_size, f"the steering vector for layer {layer}")
        elif self.vectors is not None:
            add_layers = set(layers)
            check_vector(self.vectors, hidden_size, batch_size, "the steering vector")
        if not set(self.ablate) <= set(layers) or add_layers | set(self.ablate) != set(layers):
            raise LayerIndexError(
                f"The intervention steers layers {list(layers)} but ablates at {sorted(self.ablate)} and adds at "
                f"{sorted(add_layers)}; list every ablated or added layer in layers, and no other.")
        out: dict[int, tuple[Tensor, ...]] = {}
        for layer, dirs in self.ablate.items():
            units = []
            for d in dirs:
                what = f"the ablation direction for layer {layer}"
                check_vector(d, hidden_size, batch_size, what)
                n = d.float().norm(dim=-1, keepdim=True)
                if bool((n == 0).any()):
                    raise ShapeMismatchError(f"{what} has norm 0; give a non-zero direction.")
                units.append(d.float() / n)
            out[int(layer)] = tuple(units)
        return out

    def adds_at(self, layer: int) -> bool:
        """Whether a vector is added at ``layer`` (an ablation-only layer adds none)."""
        if self.predictor is not None:
            return True
        if self.vectors is None:
            return False
        return layer in self.vectors if isinstance(self.vectors, Mapping) else True

    def vector_for(self, layer: int) -> Tensor:
        assert self.vectors is not None
        return self.vectors[layer] if isinstance(self.vectors, Mapping) else self.vectors

    @property
    def needs_extra_prefill(self) -> bool:
        """True when the predictor reads a layer above a steered one (one extra prompt pass)."""
        return self.predictor is not None and self.source_layer is not None and self.source_layer > min(self.layers)


def check_vector(v: Tensor, hidden_size: int, batch_size: int, what: str = "the steering vector") -> None:
    """Validate a ``[d_model]`` or ``[batch, d_model]`` vector."""
    if not isinstance(v, Tensor):
        raise ShapeMismatchError(f"{what} must be a torch.Tensor, got {type(v).__name__}.")
    if v.dim() not in (1, 2) or v.shape[-1] != hidden_size:
        raise ShapeMismatchError(
            f"{what} has shape {tuple(v.shape)}, but this model needs [{hidden_size}] or [batch, {hidden_size}] "
            f"(hidden size {hidden_size}). Was it fitted on another model?"
        )
    if v.dim() == 2 and v.shape[0] not in (1, batch_size):
        raise ShapeMismatchError(
            f"{what} has {v.shape[0]} rows but the batch has {batch_size} inputs; give one row per input."
        )
    check_finite(v, what)
