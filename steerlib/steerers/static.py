"""Fixed per-layer vectors, the same for every input: a control vector (e.g. imported from GGUF).

(Until 0.2 this module also held the baselines and mean steering; those names moved to
:mod:`steerlib.steerers.baselines` and :mod:`steerlib.steerers.mean` and still import from here
with a DeprecationWarning.)"""

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
from ..positions import Where, as_positions
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
    builds_from_params = False
    _tensors = ("vectors_",)

    def __init__(self, layers: Sequence[int] | int = (0,), *, alpha: float = 1.0, positions: Where = "all",
                 model_hint: str = "") -> None:
        self.layers = layers
        self.alpha = alpha
        self.positions = positions
        self.model_hint = model_hint

    @property
    def layer(self) -> int:  # type: ignore[override]
        """The lowest steered layer (``layers`` is the full list)."""
        return min(self.layer_list)

    @property
    def layer_list(self) -> list[int]:
        """``layers`` as a validated list of distinct 0-based ints."""
        layers = self.layers
        ls = [layers] if isinstance(layers, numbers.Integral) and not isinstance(layers, bool) else layers
        if (isinstance(ls, (str, bytes)) or not isinstance(ls, Sequence) or not ls
                or any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in ls)):
            raise LayerIndexError(f"layers must be a non-empty list of 0-based layer indices, got {layers!r}.")
        out = [int(x) for x in ls]
        if len(set(out)) != len(out):
            raise LayerIndexError(f"layers {out} repeat an index; give each layer once (add the vectors first).")
        return out

    def _check_params(self, model: SteerableModel) -> None:
        self._check_settings()
        check_layers(self.layer_list, model.num_layers)
        as_positions(self.positions)
        check_finite(self.alpha, "alpha")

    def _check_settings(self) -> None:
        self.layer_list  # noqa: B018 - validates layers
        check_finite(self.alpha, "alpha")
        as_positions(self.positions)
        if not isinstance(self.model_hint, str):
            raise DataError(f"StaticVectors: model_hint must be a string, got {self.model_hint!r}.")

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, tuple[int | None, ...] | None]:
        return {"vectors_": (len(self.layer_list), hidden_size)}

    @classmethod
    def from_vectors(cls, model: SteerableModel, vectors: Mapping[int, Float[Tensor, " d_model"] | np.ndarray], *,
                     alpha: float = 1.0, positions: Where = "all", model_hint: str = "") -> "StaticVectors":
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
        return {layer: self.vectors_[k].clone() for k, layer in enumerate(self.layer_list)}

    def vectors(self, model: SteerableModel, items: Inputs, *,
                layer: int | None = None) -> Float[Tensor, "batch d_model"]:
        """The vector of ``layer`` (default: the only layer) for every input (before ``alpha``)."""
        self.check_model(model)
        layers = self.layer_list
        if layer is None:
            if len(layers) != 1:
                raise DataError(
                    f"This StaticVectors steers {len(layers)} layers {layers}; pass layer=... to "
                    "vectors(), or use as_dict() for all of them."
                )
            layer = layers[0]
        if layer not in layers:
            raise LayerIndexError(f"No vector for layer {layer}; this StaticVectors steers layers {layers}.")
        v = self.vectors_[layers.index(layer)]
        return v[None, :].expand(len(as_items(items)), -1).clone()

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None,
                     vectors: Float[Tensor, "batch d_model"] | None = None) -> Intervention | None:
        """Every layer's vector (``vectors``, if given, must come from this steerer: they are the same)."""
        self.check_model(model)
        a, pos = self._resolve(alpha, positions)
        return Intervention.build(self.layer_list, self.as_dict(), alpha=a, positions=pos)

    def static_vectors(self) -> dict[int, Float[Tensor, " d_model"]] | None:
        return self.as_dict()

    def load_extra_state(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        super().load_extra_state(state, tensors)
        v = self.vectors_
        try:
            layers = self.layer_list
        except LayerIndexError as e:
            raise PersistenceError(f"The saved layers are invalid ({e}); the folder is corrupt, save it again.") from e
        if v.dim() != 2 or v.shape[0] != len(layers):
            raise PersistenceError(
                f"The saved vectors_ has shape {tuple(v.shape)} but the folder lists {len(layers)} layers "
                f"{layers}; the folder is corrupt, save the steerer again."
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


_MOVED = {"NoSteer": "baselines", "PromptSteer": "baselines", "SAFETY_PROMPT": "baselines",
          "MeanSteer": "mean", "MeanSteerBA": "mean"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"steerlib.steerers.static.{name} moved to steerlib.steerers.{_MOVED[name]} "
                      f"(or import it from steerlib.steerers); the old path will be removed.",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
