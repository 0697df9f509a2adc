"""P2S, the per-input oracle, its norm-matched random control, and the shared P2S settings."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.items import ContrastiveItem, check_items
from ..engine import SteerableModel
from ..errors import ShapeMismatchError
from .base import Inputs, Steerer, as_items
from .extract import check_reduction, equalize_norms, extract_p2s


class P2SBased(Steerer):
    """Shared hyperparameters of methods built on P2S vectors."""

    def __init__(self, layer: int = 0, *, alpha: float = 1.0, positions: str = "all",
                 reduction: str = "completion_mean", continuation_tokens: int = 100, seed: int = 0,
                 batch_size: int = 8, equalize_norms_to: str | None = None, progress: bool = True) -> None:
        super().__init__(layer, alpha=alpha, positions=positions)
        self.reduction = check_reduction(reduction)
        self.continuation_tokens = continuation_tokens
        self.seed = seed
        self.batch_size = batch_size
        self.equalize_norms_to = equalize_norms_to
        self.progress = progress

    def _p2s(self, model: SteerableModel, items: Sequence[ContrastiveItem], input_layer: int | None = None,
             input_position: str = "last_prompt") -> tuple[Tensor, Tensor | None]:
        feats = extract_p2s(model, items, self.layer, reduction=self.reduction, input_layer=input_layer,
                            input_position=input_position, batch_size=self.batch_size,
                            continuation_tokens=self.continuation_tokens, seed=self.seed, progress=self.progress)
        z = feats.z
        if self.equalize_norms_to is not None:
            z = equalize_norms(z, [it.behavior for it in items], self.equalize_norms_to)
        return z, feats.h

    def fit_from_p2s(self, model: SteerableModel, items: Sequence[ContrastiveItem], z: Float[Tensor, "n d_model"],
                     h: Float[Tensor, "n d_model"] | None = None) -> "P2SBased":
        """Fit from P2S features already extracted for ``items`` (this steerer's layer and reduction;
        ``h`` at the L2S input layer), so several methods share one extraction."""
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
        z, h = self._p2s(model, items, **self._input_read())
        self._learn(items, z, h)

    def _input_read(self) -> dict[str, object]:
        """Which L2S-style input state to extract alongside the targets (none by default)."""
        return {}

    def _learn(self, items: list[ContrastiveItem], z: Tensor, h: Tensor | None) -> None:
        """Learn from targets ``z`` (and inputs ``h``); nothing to learn by default (P2S)."""


class P2S(P2SBased):
    """P2S (oracle): each input is steered with its own P2S vector, from its own completions.

    Needs the right completions at test time, so it is an upper bound, not a deployable method.
    ``fit`` only records the model (there is nothing to learn).
    """

    method = "p2s"
    needs_fit = False

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        return None  # nothing to learn: each input brings its own completions

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        self.check_model(model)
        items = check_items(as_items(items), need_completions=True, what="input list")
        z, _ = self._p2s(model, items)
        return z


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
            g = torch.Generator().manual_seed(_item_seed(self.seed, it.id))
            d = torch.randn(model.hidden_size, generator=g)
            out[i] = d / d.norm() * norms[i]
        return out


def _item_seed(seed: int, item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:8], "little") & ((1 << 63) - 1)
