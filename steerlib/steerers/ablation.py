"""Directional ablation and ablation-then-addition (the refusal-direction recipe; steering-vectors'
``ablation_operator`` and ``ablation_then_addition_operator``).

The direction is the unit mean of the training P2S differences at ``layer`` (difference in means
of the positive and negative runs; items with equal completions left out). At each layer of
``ablate_layers`` (default: ``layer``; ``"all"``: every layer) and at ``positions``, the component
of the hidden state along it is removed, ``h - (h . u) u``. :class:`AblateThenAdd` then adds
``alpha * v`` (``v`` the mean difference) at ``layer``, so the steered tokens' projection on ``u``
is set rather than shifted. Pure ablation (:class:`DirectionalAblation`) adds nothing, so its
``alpha`` has no effect. ``norm_preserving=True`` rescales each steered token to its norm before
the layer's edit. llama.cpp control vectors cannot express an ablation, so neither exports to GGUF.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import Unpack

from ..data.items import ContrastiveItem
from ..engine import Batch, SteerableModel
from ..errors import DataError
from ..intervention import Intervention, check_layers
from ..positions import Where
from .base import Inputs, as_items
from .p2s import P2SBased, P2SParams


class DirectionalAblation(P2SBased):
    """``ablate``: remove the component along the unit mean P2S direction at ``ablate_layers``.

    Args:
        layer: where the direction is learned (and, for :class:`AblateThenAdd`, the vector added).
        ablate_layers: layers to ablate at: a list, ``None`` (just ``layer``) or ``"all"``.
        norm_preserving: rescale each steered token to its norm before the edit.
        behaviors: use only items with these behaviour labels.

    The other arguments are those of every P2S-based steerer.
    """

    method = "ablate"
    vectors_depend_on_alpha = False
    adds: ClassVar[bool] = False
    _tensors = ("vector_",)

    def __init__(self, layer: int = 0, *, ablate_layers: Sequence[int] | Literal["all"] | None = None,
                 norm_preserving: bool = False, behaviors: Sequence[str] | None = None,
                 **shared: Unpack[P2SParams]) -> None:
        super().__init__(layer, **shared)
        self.ablate_layers = ablate_layers
        self.norm_preserving = norm_preserving
        self.behaviors = behaviors

    def _check_params(self, model: SteerableModel) -> None:
        super()._check_params(model)
        self._ablated(model.num_layers)

    def _check_settings(self) -> None:
        super()._check_settings()
        from .params import check_bool

        check_bool(self, "norm_preserving")

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, tuple[int | None, ...] | None]:
        return {"vector_": (hidden_size,)}

    def _ablated(self, num_layers: int) -> list[int]:
        if self.ablate_layers is None:
            return [self.layer]
        if self.ablate_layers == "all":
            return list(range(num_layers))
        if isinstance(self.ablate_layers, str):
            raise DataError(f"ablate_layers must be a list of layers, None or 'all', got {self.ablate_layers!r}.")
        return list(check_layers(list(self.ablate_layers), num_layers))

    def _learn(self, items: list[ContrastiveItem], z: Tensor, h: Tensor | None) -> None:
        keep = [i for i, it in enumerate(items) if (self.behaviors is None or it.behavior in self.behaviors)
                and bool(z[i].any())]
        if not keep:
            raise DataError(f"{type(self).__name__} needs training items with differing completions"
                            f"{'' if self.behaviors is None else f' and a behaviour in {self.behaviors}'}.")
        self.vector_ = z[keep].mean(0)

    @property
    def direction_(self) -> Float[Tensor, " d_model"]:
        """The unit ablation direction."""
        self.check_fitted()
        return self.vector_ / self.vector_.norm()

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        """What is added per input: zero (ablation only) or the mean difference (:class:`AblateThenAdd`)."""
        self.check_model(model)
        n = len(as_items(items))
        if not self.adds:
            return torch.zeros(n, model.hidden_size)
        return self.vector_[None, :].expand(n, -1).clone()

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None,
                     vectors: Float[Tensor, "batch d_model"] | None = None) -> Intervention | None:
        self.check_model(model)
        a, pos = self._resolve(alpha, positions)
        ablated = self._ablated(model.num_layers)
        u = self.direction_
        add = None
        if self.adds:
            add = {self.layer: self.vectors(model, items) if vectors is None else vectors}
        layers = sorted(set(ablated) | ({self.layer} if self.adds else set()))
        return Intervention.build(layers, add, alpha=a, positions=pos, ablate={k: u for k in ablated},
                                  norm_preserving=self.norm_preserving)

    def static_vectors(self) -> dict[int, Float[Tensor, " d_model"]] | None:
        return None  # an ablation is no control vector


class AblateThenAdd(DirectionalAblation):
    """``ablate_add``: ablate the unit mean P2S direction, then add ``alpha`` x the mean P2S vector at
    ``layer`` (arguments as :class:`DirectionalAblation`)."""

    method = "ablate_add"
    adds = True
