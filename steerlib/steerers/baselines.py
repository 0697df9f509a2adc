"""Baselines that add no vector: the unsteered model and the Prompt baseline."""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.chat import edit_last_user
from ..data.items import ContrastiveItem
from ..data.templates import PROMPT_BASELINE_SAFETY
from ..engine import Batch, SteerableModel
from ..errors import DataError
from ..intervention import Intervention
from ..positions import Where
from .base import Inputs, Steerer, as_items

#: The paper's safety instruction (appended by :class:`PromptSteer` by default).
SAFETY_PROMPT = PROMPT_BASELINE_SAFETY.text


class NoSteer(Steerer):
    """The unsteered model (a baseline with the same interface)."""

    method = "none"
    needs_fit = False
    adds_vectors = False
    is_unsteered = True

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        return None

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        return torch.zeros(len(as_items(items)), model.hidden_size)

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None,
                     vectors: Float[Tensor, "batch d_model"] | None = None) -> Intervention | None:
        return None

    def steered_rows(self, model: SteerableModel, items: Inputs) -> list[int]:
        return []


class PromptSteer(NoSteer):
    """The Prompt baseline: an instruction added to each prompt, no vector.

    ``where="suffix"`` appends the instruction (the paper's safety prompt), ``"prefix"``
    prepends it (the paper's POPE prompt "Examine the image carefully and answer: ").
    """

    method = "prompt"
    is_unsteered = False

    def __init__(self, layer: int = 0, *, alpha: float = 1.0, positions: Where = "all",
                 instruction: str = SAFETY_PROMPT, where: Literal["prefix", "suffix"] = "suffix") -> None:
        super().__init__(layer, alpha=alpha, positions=positions)
        self.instruction = instruction
        self.where = where

    def _check_params(self, model: SteerableModel) -> None:
        super()._check_params(model)
        if self.where not in ("prefix", "suffix"):
            raise DataError(f"where must be 'prefix' or 'suffix', got {self.where!r}.")

    def prepare_prompts(self, items: list[ContrastiveItem]) -> list[ContrastiveItem]:
        def edit(p: str) -> str:
            return p + self.instruction if self.where == "suffix" else self.instruction + p

        return [it.with_(prompt=edit_last_user(it.prompt, edit), id=it.id) for it in items]

    def steered_rows(self, model: SteerableModel, items: Inputs) -> list[int]:
        return list(range(len(as_items(items))))
