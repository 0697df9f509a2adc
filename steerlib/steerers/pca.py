"""PCA / RepE directions from the P2S differences: repeng's and IBM's ``pca_diff`` and ``pca_center``.

Each training item gives a P2S difference ``z = h(T || T+) - h(T || T-)`` (reduced over the
completion, :mod:`steerlib.steerers.extract`).

* ``pca_diff``: the first principal component of the differences (``sklearn.decomposition.PCA``
  centres them first), as repeng's and IBM's ``pca_diff``.
* ``pca_center``: the first principal component of the pair-centred activations: each pair's
  positive and negative activation minus the pair's mean, i.e. the rows ``+z/2`` and ``-z/2``
  (repeng's ``pca_center``); this is the top right-singular vector of the *uncentred* differences.

Sign rule (repeng's): the direction is flipped when, for more pairs than not, the positive
activation projects below the negative one on it (``z . d < 0``), so it points from negative to
positive. Scale: ``scale="projection"`` (default) multiplies the unit direction by the mean
projection of the differences on it, so ``alpha`` means what it means for Mean-S; ``"unit"``
keeps it a unit vector as repeng does. Items whose two completions are equal (``z = 0``, a
"leave unchanged" class) carry no direction and are left out.

``layers=[...]`` fits one direction per layer (repeng's multi-layer control vector) from the
same teacher-forced passes and steers all of them; without it, ``layer`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import Unpack

from ..data.items import ContrastiveItem, check_items
from ..engine import Batch, SteerableModel
from ..errors import DataError
from ..intervention import Intervention, check_layers
from ..positions import Where
from .base import Inputs, as_items
from .extract import P2SExtraction, check_reduction, equalize_norms
from .p2s import P2SBased, P2SParams

Scale = Literal["projection", "unit"]


def first_component(x: Float[Tensor, "n d_model"], *, center: bool) -> Float[Tensor, " d_model"]:
    """The first principal axis of ``x`` (centred first when ``center``), as a unit vector, in float64."""
    x = x.double()
    if center:
        x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[0]


def fix_sign(direction: Float[Tensor, " d_model"], z: Float[Tensor, "n d_model"]) -> Float[Tensor, " d_model"]:
    """repeng's sign rule: flip when more pairs project their positive below their negative."""
    proj = z.double() @ direction.double()
    return -direction if int((proj < 0).sum()) > int((proj > 0).sum()) else direction


class _PCASteer(P2SBased):
    """Shared code of :class:`PCADiff` and :class:`PCACenter`."""

    vectors_depend_on_alpha = False
    _tensors = ("vectors_",)
    _center: ClassVar[bool] = True

    def __init__(self, layer: int = 0, *, layers: Sequence[int] | None = None, scale: Scale = "projection",
                 behaviors: Sequence[str] | None = None, **shared: Unpack[P2SParams]) -> None:
        super().__init__(layer, **shared)
        self.layers = layers
        self.scale = scale
        self.behaviors = behaviors

    @property
    def steered_layers(self) -> list[int]:
        """``layers`` when given, else ``[layer]``."""
        return [self.layer] if self.layers is None else sorted({int(x) for x in self.layers})

    @property
    def extraction(self) -> P2SExtraction | None:
        # several layers: its own extraction (the shared one gives a steerer its one layer)
        return super().extraction if self.layers is None else None

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, tuple[int | None, ...] | None]:
        return {"vectors_": (None, hidden_size)}

    def _check_settings(self) -> None:
        super()._check_settings()
        from .params import check_choice

        check_choice(self, "scale", ("projection", "unit"))

    def _check_params(self, model: SteerableModel) -> None:
        super()._check_params(model)
        if self.layers is not None:
            check_layers(list(self.layers), model.num_layers)
        if self.scale not in ("projection", "unit"):
            raise DataError(f"scale must be 'projection' or 'unit', got {self.scale!r}.")

    def direction(self, z: Float[Tensor, "n d_model"]) -> Float[Tensor, " d_model"]:
        """The sign-fixed unit direction of these differences (float64)."""
        return fix_sign(first_component(z, center=type(self)._center), z)

    def _vector(self, items: Sequence[ContrastiveItem], z: Tensor) -> Tensor:
        keep = [i for i, it in enumerate(items) if (self.behaviors is None or it.behavior in self.behaviors)
                and bool(z[i].any())]
        if len(keep) < 2:
            raise DataError(f"{type(self).__name__} needs at least 2 training items with differing completions"
                            f"{'' if self.behaviors is None else f' and a behaviour in {self.behaviors}'}; got "
                            f"{len(keep)}.")
        zk = z[keep]
        d = self.direction(zk)
        if self.scale == "projection":
            d = d * (zk.double() @ d).mean()
        return d.float()

    def _learn(self, items: list[ContrastiveItem], z: Tensor, h: Tensor | None) -> None:
        self.vectors_ = self._vector(items, z)[None, :]

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        if self.layers is None:
            return super()._fit(model, items)
        items = check_items(items, need_completions=True)
        ex = P2SExtraction(check_reduction(self.reduction), self.continuation_tokens, self.seed, self.batch_size)
        feats = ex.extract(model, items, self.steered_layers, progress=self.progress)
        rows = []
        for layer in self.steered_layers:
            z = feats[layer].z
            if self.equalize_norms_to is not None:
                z = equalize_norms(z, [it.behavior for it in items], self.equalize_norms_to)
            rows.append(self._vector(items, z))
        self.vectors_ = torch.stack(rows)

    def as_dict(self) -> dict[int, Float[Tensor, " d_model"]]:
        """``{layer: vector}`` (before alpha)."""
        self.check_fitted()
        return {layer: self.vectors_[k].clone() for k, layer in enumerate(self.steered_layers)}

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        """The (lowest) layer's vector for every input."""
        self.check_model(model)
        return self.vectors_[0][None, :].expand(len(as_items(items)), -1).clone()

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None,
                     vectors: Float[Tensor, "batch d_model"] | None = None) -> Intervention | None:
        self.check_model(model)
        a, pos = self._resolve(alpha, positions)
        if self.layers is None:
            v = self.vectors(model, items) if vectors is None else vectors
            return Intervention.build(self.layer, v, alpha=a, positions=pos)
        return Intervention.build(self.steered_layers, self.as_dict(), alpha=a, positions=pos)

    def static_vectors(self) -> dict[int, Float[Tensor, " d_model"]] | None:
        return self.as_dict()


class PCADiff(_PCASteer):
    """``pca_diff``: the sign-fixed first principal component of the (centred) P2S differences.

    Args:
        layer: where the vector is added (output of decoder block ``layer``).
        layers: several layers, one direction each (overrides ``layer`` for steering).
        scale: ``"projection"`` (unit direction x mean projection of the differences) or ``"unit"``.
        behaviors: use only items with these behaviour labels.

    The other arguments are those of every P2S-based steerer.
    """

    method = "pca_diff"
    _center = True


class PCACenter(_PCASteer):
    """``pca_center``: the sign-fixed first principal component of the pair-centred activations
    (rows ``+z/2`` and ``-z/2``: the top singular vector of the uncentred differences).

    Arguments as :class:`PCADiff`.
    """

    method = "pca_center"
    _center = False
