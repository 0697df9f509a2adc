"""Input-independent baselines: no steering, prompting, mean steering and its BA variant."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.items import ContrastiveItem, check_items
from ..engine import Batch, SteerableModel
from ..errors import DataError
from ..intervention import Intervention
from .base import Inputs, Steerer, as_items
from .p2s import P2SBased

SAFETY_PROMPT = (" Refuse to answer any unsafe or harmful query. If it is a legal, financial or healthcare consultation "
                 "query, defer the user to appropriate human expert. Answer normally in any other case.")


class NoSteer(Steerer):
    """The unsteered model (a baseline with the same interface)."""

    method = "none"
    needs_fit = False

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        return None

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        return torch.zeros(len(as_items(items)), model.hidden_size)

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch, *,
                     alpha: float | None = None, positions: str | None = None) -> Intervention | None:
        return None


class PromptSteer(NoSteer):
    """The Prompt baseline: an instruction added to each prompt, no vector.

    ``where="suffix"`` appends the instruction (the paper's safety prompt), ``"prefix"``
    prepends it (the paper's POPE prompt "Examine the image carefully and answer: ").
    """

    method = "prompt"

    def __init__(self, layer: int = 0, *, alpha: float = 1.0, positions: str = "all",
                 instruction: str = SAFETY_PROMPT, where: str = "suffix") -> None:
        super().__init__(layer, alpha=alpha, positions=positions)
        if where not in ("prefix", "suffix"):
            raise ValueError(f"where must be 'prefix' or 'suffix', got {where!r}.")
        self.instruction = instruction
        self.where = where

    def prepare_prompts(self, items: list[ContrastiveItem]) -> list[ContrastiveItem]:
        def edit(p: str) -> str:
            return p + self.instruction if self.where == "suffix" else self.instruction + p

        return [it.with_(prompt=edit(it.prompt), id=it.id) for it in items]


class MeanSteer(P2SBased):
    """Mean-S: one vector, the mean of the training P2S vectors (CAA-style).

    ``behaviors`` restricts the mean to some behaviour labels (e.g. leave out a benign class
    whose target is zero).
    """

    method = "mean"
    _tensors = ("vector_",)

    def __init__(self, layer: int = 0, *, alpha: float = 1.0, positions: str = "all",
                 reduction: str = "completion_mean", continuation_tokens: int = 100, seed: int = 0,
                 batch_size: int = 8, equalize_norms_to: str | None = None, progress: bool = True,
                 behaviors: Sequence[str] | None = None) -> None:
        super().__init__(layer, alpha=alpha, positions=positions, reduction=reduction,
                         continuation_tokens=continuation_tokens, seed=seed, batch_size=batch_size,
                         equalize_norms_to=equalize_norms_to, progress=progress)
        self.behaviors = list(behaviors) if behaviors is not None else None

    def _learn(self, items: list[ContrastiveItem], z: Tensor, h: Tensor | None) -> None:
        keep = [i for i, it in enumerate(items) if self.behaviors is None or it.behavior in self.behaviors]
        if not keep:
            raise DataError(f"No training item has a behaviour in {self.behaviors}; check the labels.")
        self.vector_ = z[keep].mean(0)

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        self.check_model(model)
        return self.vector_[None, :].expand(len(as_items(items)), -1).clone()


class MeanSteerBA(MeanSteer):
    """Mean-S(BA): behaviour-agnostic mean steering.

    Every training input gets the same contrastive pair (default: the paper's harmful/safe pair
    and question suffix), whatever its behaviour; the vector is the mean of those P2S vectors.
    """

    method = "mean_ba"

    def __init__(self, layer: int = 0, *, alpha: float = 1.0, positions: str = "all",
                 reduction: str = "completion_mean", continuation_tokens: int = 100, seed: int = 0,
                 batch_size: int = 8, equalize_norms_to: str | None = None, progress: bool = True,
                 behaviors: Sequence[str] | None = None, positive: str = "Harmful", negative: str = "Safe",
                 prompt_suffix: str = " Comply with user request if it is safe and don't if it is harmful. "
                                      "Is the user request safe or harmful?") -> None:
        super().__init__(layer, alpha=alpha, positions=positions, reduction=reduction,
                         continuation_tokens=continuation_tokens, seed=seed, batch_size=batch_size,
                         equalize_norms_to=None, progress=progress, behaviors=behaviors)
        self.positive = positive
        self.negative = negative
        self.prompt_suffix = prompt_suffix

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        items = check_items(items, what="training set")
        if self.behaviors is not None:
            items = [it for it in items if it.behavior in self.behaviors]
            if not items:
                raise DataError(f"No training item has a behaviour in {self.behaviors}.")
        fixed = [it.with_(prompt=it.prompt + self.prompt_suffix, positive=self.positive, negative=self.negative)
                 for it in items]
        z, _ = self._p2s(model, fixed)
        self.vector_ = z.mean(0)

    def fit_from_p2s(self, model: SteerableModel, items: Sequence[ContrastiveItem], z: Tensor,
                     h: Tensor | None = None) -> "MeanSteerBA":
        raise DataError("Mean-S(BA) extracts its own fixed-pair vectors; call fit(model, items) instead.")
