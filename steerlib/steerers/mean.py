"""Mean steering: Mean-S (one vector, the mean of the training P2S vectors) and Mean-S(BA)."""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor
from typing_extensions import Unpack

from ..data.chat import edit_last_user
from ..data.items import ContrastiveItem, check_items
from ..engine import SteerableModel
from ..errors import DataError
from .base import Inputs, as_items
from .extract import P2SExtraction
from .p2s import P2SBased, P2SParams


class MeanSteer(P2SBased):
    """Mean-S: one vector, the mean of the training P2S vectors (CAA-style).

    ``behaviors`` restricts the mean to some behaviour labels (e.g. leave out a benign class
    whose target is zero). The other arguments are those of every P2S-based steerer
    (:class:`~steerlib.steerers.p2s.P2SBased`).
    """

    method = "mean"
    vectors_depend_on_alpha = False
    _tensors = ("vector_",)

    def __init__(self, layer: int = 0, *, behaviors: Sequence[str] | None = None,
                 **shared: Unpack[P2SParams]) -> None:
        super().__init__(layer, **shared)
        self.behaviors = behaviors

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, tuple[int | None, ...] | None]:
        return {"vector_": (hidden_size,)}

    def _learn(self, items: list[ContrastiveItem], z: Tensor, h: Tensor | None) -> None:
        keep = [i for i, it in enumerate(items) if self.behaviors is None or it.behavior in self.behaviors]
        if not keep:
            raise DataError(f"No training item has a behaviour in {self.behaviors}; check the labels.")
        self.vector_ = z[keep].mean(0)

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        self.check_model(model)
        return self.vector_[None, :].expand(len(as_items(items)), -1).clone()

    def static_vectors(self) -> dict[int, Float[Tensor, " d_model"]] | None:
        self.check_fitted()
        return {self.layer: self.vector_.clone()}


class MeanSteerBA(MeanSteer):
    """Mean-S(BA): behaviour-agnostic mean steering.

    Every training input gets the same contrastive pair (default: the paper's harmful/safe pair
    and question suffix), whatever its behaviour; the vector is the mean of those P2S vectors.
    Every input has the same pair, so ``equalize_norms_to`` (per-behaviour rescaling) does not
    apply and is refused.
    """

    method = "mean_ba"

    def __init__(self, layer: int = 0, *, behaviors: Sequence[str] | None = None, positive: str = "Harmful",
                 negative: str = "Safe",
                 prompt_suffix: str = " Comply with user request if it is safe and don't if it is harmful. "
                                      "Is the user request safe or harmful?",
                 **shared: Unpack[P2SParams]) -> None:
        super().__init__(layer, behaviors=behaviors, **shared)
        self.positive = positive
        self.negative = negative
        self.prompt_suffix = prompt_suffix

    @property
    def extraction(self) -> P2SExtraction | None:
        return None  # its own fixed-pair items: nothing to share with other steerers

    def _check_params(self, model: SteerableModel) -> None:
        super()._check_params(model)
        if self.equalize_norms_to is not None:
            raise DataError(
                f"Mean-S(BA) gives every input the same contrastive pair, so there are no behaviour groups whose "
                f"norms could be equalized; drop equalize_norms_to={self.equalize_norms_to!r} (or use MeanSteer)."
            )

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        items = check_items(items, what="training set")
        if self.behaviors is not None:
            items = [it for it in items if it.behavior in self.behaviors]
            if not items:
                raise DataError(f"No training item has a behaviour in {self.behaviors}.")
        fixed = [it.with_(prompt=edit_last_user(it.prompt, lambda p: p + self.prompt_suffix), positive=self.positive, negative=self.negative)
                 for it in items]
        z, _ = self._p2s(model, fixed)
        self.vector_ = z.mean(0)

    def fit_from_p2s(self, model: SteerableModel, items: Sequence[ContrastiveItem], z: Tensor,
                     h: Tensor | None = None) -> "MeanSteerBA":
        raise DataError("Mean-S(BA) extracts its own fixed-pair vectors; call fit(model, items) instead.")
