"""P2S, the per-input oracle, its norm-matched random control, and the shared P2S settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.items import ContrastiveItem, check_items, stable_seed
from ..engine import SteerableModel
from ..errors import DataError, ShapeMismatchError
from ..positions import P2SReduction, SourcePosition, Where
from .base import Inputs, Steerer, as_items
from .extract import P2SExtraction, check_reduction, equalize_norms, extract_p2s
from .params import check_bool, check_int, check_optional_str


class P2SParams(TypedDict, total=False):
    """The hyperparameters every P2S-based steerer shares (declared once, see :class:`P2SBased`)."""

    alpha: float
    positions: Where
    reduction: P2SReduction
    continuation_tokens: int
    seed: int
    batch_size: int
    equalize_norms_to: str | None
    progress: bool


class P2SBased(Steerer):
    """Shared hyperparameters of methods built on P2S vectors.

    Args:
        reduction: how a contrastive pair is reduced over positions (``end_of_turn``,
            ``completion_mean``, ``sampled_mean``; see :mod:`steerlib.steerers.extract`).
        continuation_tokens: sampled tokens after the forced completion (``sampled_mean``).
        seed: the seed of every random choice the method makes (sampling, g's training).
        batch_size: rows per teacher-forced extraction batch.
        equalize_norms_to: rescale each behaviour's vectors to this behaviour's mean norm.
        progress: show progress bars.

    Subclasses take these as ``**shared: Unpack[P2SParams]`` and pass them on, so they are
    declared here only.
    """

    def __init__(self, layer: int = 0, *, alpha: float = 1.0, positions: Where = "all",
                 reduction: P2SReduction = "completion_mean", continuation_tokens: int = 100, seed: int = 0,
                 batch_size: int = 8, equalize_norms_to: str | None = None, progress: bool = True) -> None:
        super().__init__(layer, alpha=alpha, positions=positions)
        self.reduction = reduction
        self.continuation_tokens = continuation_tokens
        self.seed = seed
        self.batch_size = batch_size
        self.equalize_norms_to = equalize_norms_to
        self.progress = progress

    @property
    def extraction(self) -> P2SExtraction | None:
        return P2SExtraction(check_reduction(self.reduction), self.continuation_tokens, self.seed, self.batch_size)

    def input_read(self) -> tuple[int, SourcePosition] | None:
        """The input state this method learns from besides the targets: ``(layer, position)`` (L2S), or None."""
        return None

    def _check_settings(self) -> None:
        super()._check_settings()
        check_reduction(self.reduction)
        check_int(self, "continuation_tokens", minimum=0)
        check_int(self, "batch_size", minimum=1)
        check_int(self, "seed", minimum=0)
        check_optional_str(self, "equalize_norms_to")
        check_bool(self, "progress")

    def _p2s(self, model: SteerableModel, items: Sequence[ContrastiveItem], input_layer: int | None = None,
             input_position: SourcePosition = "last_prompt") -> tuple[Tensor, Tensor | None]:
        ex = self.extraction or P2SExtraction()
        feats = extract_p2s(model, items, self.layer, reduction=ex.reduction, input_layer=input_layer,
                            input_position=input_position, batch_size=ex.batch_size,
                            continuation_tokens=ex.continuation_tokens, seed=ex.seed, progress=self.progress)
        z = feats.z
        if self.equalize_norms_to is not None:
            z = equalize_norms(z, [it.behavior for it in items], self.equalize_norms_to)
        return z, feats.h

    def fit_from_p2s(self, model: SteerableModel, items: Sequence[ContrastiveItem], z: Float[Tensor, "n d_model"],
                     h: Float[Tensor, "n d_model"] | None = None) -> "P2SBased":
        """Fit from P2S features already extracted for ``items`` (this steerer's layer and reduction;
        ``h`` at the L2S input layer), so several methods share one extraction."""
        self._check_params(model)
        items = check_items(items, need_completions=True)
        if z.shape != (len(items), model.hidden_size):
            raise ShapeMismatchError(f"z has shape {tuple(z.shape)}; expected [{len(items)}, {model.hidden_size}].")
        if self.equalize_norms_to is not None:
            z = equalize_norms(z, [it.behavior for it in items], self.equalize_norms_to)
        self._learn(list(items), z, h)
        self._record_fit(model, items)
        return self

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        items = check_items(items, need_completions=True)
        read = self.input_read()
        z, h = self._p2s(model, items, *(read or ()))
        self._learn(items, z, h)

    def _learn(self, items: list[ContrastiveItem], z: Tensor, h: Tensor | None) -> None:
        """Learn from targets ``z`` (and inputs ``h``); nothing to learn by default (P2S)."""


class P2S(P2SBased):
    """P2S (oracle): each input is steered with its own P2S vector, from its own completions.

    Needs the right completions at test time, so it is an upper bound, not a deployable method.
    ``fit`` only records the model (there is nothing to learn).
    """

    method = "p2s"
    needs_fit = False
    vectors_depend_on_alpha = False

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        return None  # nothing to learn: each input brings its own completions

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        self.check_model(model)
        items = check_items(as_items(items), need_completions=True, what="input list")
        z, _ = self._p2s(model, items)
        return z

    def steered_rows(self, model: SteerableModel, items: Inputs) -> list[int]:
        """Inputs whose two completions differ: equal ones give a P2S vector of exactly zero."""
        return [i for i, it in enumerate(as_items(items)) if it.positive != it.negative]


class NormRandom(P2S):
    """Norm-Rnd: a random Gaussian direction per input, scaled to that input's P2S norm.

    The direction is seeded by ``seed`` and the item id, so it does not depend on the batch.
    """

    method = "norm_random"

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        items = as_items(items)
        norms = super().vectors(model, items).norm(dim=-1)
        out = torch.empty(len(items), model.hidden_size)
        for i, it in enumerate(items):
            g = torch.Generator().manual_seed(stable_seed(f"{self.seed}:{it.id}"))
            d = torch.randn(model.hidden_size, generator=g)
            out[i] = d / d.norm() * norms[i]
        return out

