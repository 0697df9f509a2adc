"""Fixed per-layer vectors, the same for every input: a control vector (e.g. imported from GGUF)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..data.items import ContrastiveItem
from ..engine import Batch, SteerableModel
from ..errors import DataError, LayerIndexError, PersistenceError, ShapeMismatchError
from ..intervention import Intervention, check_finite, check_layers, check_vector
from ..positions import as_positions
from .base import Inputs, Steerer, as_items


class StaticVectors(Steerer):
    """Fixed steering vectors, one per layer, the same for every input (a control vector).

    ``vectors_[k]`` is added (times ``alpha``) to the output of decoder block ``layers[k]``.
    Build one with :meth:`from_vectors` or :func:`import_gguf`; it learns nothing, so
    :meth:`fit` refuses. It saves and loads like every steerer (``save_pretrained`` /
    ``Steerer.from_pretrained``, method ``"static"``) .
    """

    method = "static"
    needs_fit = False
    _tensors = ("vectors_",)

    def __init__(self, layers: Sequence[int] | int = (0,), *, alpha: float = 1.0, positions: str = "all",
                 model_hint: str = "") -> None:
        ls = [layers] if isinstance(layers, int) else list(layers)
        if not ls or any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in ls):
            raise LayerIndexError(f"layers must be a non-empty list of 0-based layer indices, got {layers!r}.")
        ls = [int(x) for x in ls]
        if len(set(ls)) != len(ls):
            raise LayerIndexError(f"layers {ls} repeat an index; give each layer once (add the vectors first).")
        super().__init__(min(ls), alpha=alpha, positions=positions)
        self.layers = ls
        self.model_hint = model_hint

    def get_params(self) -> dict[str, Any]:
        params = super().get_params()
        params.pop("layer", None)  # derived from ``layers``
        return params

    @classmethod
    def from_vectors(cls, model: SteerableModel, vectors: Mapping[int, Float[Tensor, " d_model"] | np.ndarray], *,
                     alpha: float = 1.0, positions: str = "all", model_hint: str = "") -> "StaticVectors":
        """Wrap ``{layer: vector}`` (steerlib layers: output of decoder block ``layer``) for ``model``."""
        vecs = as_vector_dict(vectors)
        layers = check_layers(list(vecs), model.num_layers)
        for layer in layers:
            check_vector(vecs[layer], model.hidden_size, 1, f"the vector for layer {layer}")
        check_finite(alpha, "alpha")
        as_positions(positions)
        obj = cls(list(layers), alpha=float(alpha), positions=positions, model_hint=model_hint or model.model_type)
        obj.vectors_ = torch.stack([vecs[layer] for layer in layers])
        obj._record_fit(model, [])
        return obj

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        raise DataError(
            "StaticVectors holds given vectors and learns nothing from items. Build it with "
            "StaticVectors.from_vectors(model, {layer: vector}) or import_gguf(path, model); to learn a vector "
            "from contrastive items, fit a MeanSteer instead."
        )

    def as_dict(self) -> dict[int, Float[Tensor, " d_model"]]:
        """``{layer: vector}`` (copies, before ``alpha``)."""
        self.check_fitted()
        return {layer: self.vectors_[k].clone() for k, layer in enumerate(self.layers)}

    def vectors(self, model: SteerableModel, items: Inputs, *,
                layer: int | None = None) -> Float[Tensor, "batch d_model"]:
        """The vector of ``layer`` (default: the only layer) for every input (before ``alpha``)."""
        self.check_model(model)
        if layer is None:
            if len(self.layers) != 1:
                raise DataError(
                    f"This StaticVectors steers {len(self.layers)} layers {self.layers}; pass layer=... to "
                    "vectors(), or use as_dict() for all of them."
                )
            layer = self.layers[0]
        if layer not in self.layers:
            raise LayerIndexError(f"No vector for layer {layer}; this StaticVectors steers layers {self.layers}.")
        v = self.vectors_[self.layers.index(layer)]
        return v[None, :].expand(len(as_items(items)), -1).clone()

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch, *,
                     alpha: float | None = None, positions: str | None = None) -> Intervention | None:
        self.check_model(model)
        return Intervention.build(self.layers, self.as_dict(), alpha=self.alpha if alpha is None else alpha,
                                  positions=positions or self.positions)

    def load_extra_state(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        super().load_extra_state(state, tensors)
        v = self.vectors_
        if v.dim() != 2 or v.shape[0] != len(self.layers):
            raise PersistenceError(
                f"The saved vectors_ has shape {tuple(v.shape)} but the folder lists {len(self.layers)} layers "
                f"{self.layers}; the folder is corrupt, save the steerer again."
            )


def as_vector_dict(vectors: Mapping[Any, Any]) -> dict[int, Tensor]:
    """Validate ``{layer: 1-D vector}`` and return float32 CPU tensors keyed by int layers."""
    if not isinstance(vectors, Mapping) or not vectors:
        raise DataError("Give at least one vector: a dict {layer: vector of shape [d_model]}.")
    out: dict[int, Tensor] = {}
    for k, v in vectors.items():
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) < 0:
            raise LayerIndexError(f"Layer key {k!r} is not a 0-based int; key the dict by layer index.")
        if not isinstance(v, (Tensor, np.ndarray)):
            raise ShapeMismatchError(
                f"The vector for layer {k} is a {type(v).__name__}; give a torch.Tensor or numpy array."
            )
        t = torch.as_tensor(v).detach().to("cpu", torch.float32)
        if t.dim() != 1 or t.numel() == 0:
            raise ShapeMismatchError(
                f"The vector for layer {k} has shape {tuple(t.shape)}; a control vector needs one 1-D [d_model] vector "
                "per layer (for a per-row batch, this is not a static vector)."
            )
        check_finite(t, f"the vector for layer {k}")
        out[int(k)] = t.clone()
    return out
