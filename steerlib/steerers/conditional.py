"""Conditional steering (CAST-style), decided per row: a condition on the prompt's hidden state
decides, for each row of a batch, whether the behaviour vector is added.

A condition is a direction ``c`` at a condition layer, a threshold ``t`` and a comparison. The
prompt's state ``h`` is the mean over its real prompt tokens at that layer (mask-aware, so left
padding does not move it); the score is CAST's ``cos(h, tanh(P h))`` with ``P = c c^T / |c|^2``;
the condition holds when the score is ``larger`` (or ``smaller``) than ``t``. Several conditions
combine by ``rule="any"`` (``if C1 or C2 then B``) or ``"all"``. Rows whose condition fails get
a zero vector, so they run exactly unsteered. (IBM's activation-steering decides from batch row
0 and loops prompts; here every row decides for itself in one batch.)

Fitting, per condition: the positive examples are the items of the condition's behaviours
(``condition_behaviors``; default: the items whose completions differ, i.e. those with a
steering target), the negative ones the others. ``c`` is the difference of their mean prompt
states; the condition layer (from ``condition_layers``), the threshold and the comparison are
chosen by F1 on these labelled items, as CAST's grid search does. The behaviour vector is the
mean P2S vector of the positive examples at ``layer`` (Mean-S on them). The decision needs one
prompt pass before the steered pass. llama.cpp control vectors cannot condition, so it does not
export to GGUF.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from typing_extensions import Unpack

from ..data.items import ContrastiveItem
from ..engine import Batch, SteerableModel
from ..errors import DataError
from ..intervention import Intervention, check_layers
from ..positions import Where
from .base import Inputs, as_items
from .p2s import P2SBased, P2SParams

Rule = Literal["any", "all"]
Comparator = Literal["larger", "smaller"]


def cast_score(h: Float[Tensor, "batch d_model"], c: Float[Tensor, " d_model"]) -> Float[Tensor, " batch"]:
    """CAST's condition score ``cos(h, tanh(P h))``, ``P = c c^T / |c|^2`` (float64)."""
    h, c = h.double(), c.double().to(h.device)
    proj = (h @ c)[:, None] * c[None, :] / (c @ c)
    return torch.nn.functional.cosine_similarity(h, torch.tanh(proj), dim=-1)


def best_threshold(scores: Float[Tensor, " n"], labels: Bool[Tensor, " n"]) -> tuple[float, Comparator, float]:
    """``(threshold, comparator, F1)`` maximising F1 of ``score <comparator> threshold`` for ``labels``;
    thresholds are midpoints between sorted distinct scores (ties: first found, ``larger`` first)."""
    s = torch.unique(scores.double())
    if len(s) == 1:
        cands = [float(s[0]) - 1.0]
    else:
        cands = [float(s[0]) - 1.0] + ((s[1:] + s[:-1]) / 2).tolist()
    best = (cands[0], "larger", -1.0)
    for comp in ("larger", "smaller"):
        for t in cands:
            pred = scores > t if comp == "larger" else scores < t
            tp = int((pred & labels).sum())
            f1 = 2 * tp / max(1, int(pred.sum()) + int(labels.sum()))
            if f1 > best[2] + 1e-12:
                best = (t, comp, f1)  # type: ignore[assignment]
    return best  # type: ignore[return-value]


class ConditionalSteer(P2SBased):
    """CAST-style conditional steering with per-row decisions (see the module docstring).

    Args:
        layer: where the behaviour vector is added.
        condition_layers: candidate condition layers for the search (default: ``[layer]``).
        condition_behaviors: one behaviour list per condition (``[["harmful"], ["advice"]]`` is two
            conditions); default one condition: the items with a steering target.
        rule: ``"any"`` (C1 or C2 ...) or ``"all"`` (C1 and C2 ...).

    The other arguments are those of every P2S-based steerer.
    """

    method = "conditional"
    vectors_depend_on_alpha = False
    _tensors = ("vector_", "condition_vectors_")

    def __init__(self, layer: int = 0, *, condition_layers: Sequence[int] | None = None,
                 condition_behaviors: Sequence[Sequence[str]] | None = None, rule: Rule = "any",
                 **shared: Unpack[P2SParams]) -> None:
        super().__init__(layer, **shared)
        self.condition_layers = condition_layers
        self.condition_behaviors = condition_behaviors
        self.rule = rule

    def _candidates(self, num_layers: int) -> list[int]:
        return [self.layer] if self.condition_layers is None else list(check_layers(list(self.condition_layers),
                                                                                     num_layers))

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, tuple[int | None, ...] | None]:
        return {"vector_": (hidden_size,), "condition_vectors_": (None, hidden_size)}

    def _check_settings(self) -> None:
        super()._check_settings()
        from .params import check_choice

        check_choice(self, "rule", ("any", "all"))

    def _check_params(self, model: SteerableModel) -> None:
        super()._check_params(model)
        self._candidates(model.num_layers)
        if self.rule not in ("any", "all"):
            raise DataError(f"rule must be 'any' or 'all', got {self.rule!r}.")
        if self.condition_behaviors is not None and (
                isinstance(self.condition_behaviors, str) or not self.condition_behaviors
                or any(isinstance(g, str) or not g for g in self.condition_behaviors)):
            raise DataError("condition_behaviors must be a non-empty list of non-empty behaviour lists, e.g. "
                            f"[['harmful'], ['advice']]; got {self.condition_behaviors!r}.")

    # ------------------------------------------------------------------ fitting -----
    def _groups(self, items: Sequence[ContrastiveItem]) -> list[Tensor]:
        if self.condition_behaviors is None:
            return [torch.tensor([it.positive != it.negative for it in items])]
        return [torch.tensor([it.behavior in g for it in items]) for g in self.condition_behaviors]

    def _learn(self, items: list[ContrastiveItem], z: Tensor, h: Tensor | None) -> None:
        groups = self._groups(items)
        steer = torch.stack(groups).any(0) if self.rule == "any" else torch.stack(groups).all(0)
        keep = steer & z.norm(dim=-1).gt(0)
        if not bool(keep.any()):
            raise DataError("ConditionalSteer found no training item that satisfies the condition(s) and has "
                            "differing completions; check condition_behaviors and the items.")
        self.vector_ = z[keep].mean(0)
        self._fit_conditions(self._model, items, groups)

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        self._model = model
        try:
            super()._fit(model, items)
        finally:
            del self._model

    def fit_from_p2s(self, model: SteerableModel, items: Sequence[ContrastiveItem], z: Tensor,
                     h: Tensor | None = None) -> "ConditionalSteer":
        self._model = model
        try:
            return super().fit_from_p2s(model, items, z, h)  # type: ignore[return-value]
        finally:
            del self._model

    def _fit_conditions(self, model: SteerableModel, items: Sequence[ContrastiveItem], groups: list[Tensor]) -> None:
        cands = self._candidates(model.num_layers)
        states = self.prompt_states(model, items, cands)
        vecs, conds = [], []
        for labels in groups:
            best: tuple[float, int, float, str, Tensor] | None = None
            for layer in cands:
                hs = states[layer]
                if bool(labels.all()) or not bool(labels.any()):
                    c = hs.mean(0).double()  # one class only: any direction; the threshold passes every item
                else:
                    c = hs[labels].double().mean(0) - hs[~labels].double().mean(0)
                if not bool(c.any()):
                    c = torch.ones(hs.shape[1], dtype=torch.float64)
                t, comp, f1 = best_threshold(cast_score(hs, c), labels)
                if best is None or f1 > best[0] + 1e-12:
                    best = (f1, layer, t, comp, c)
            assert best is not None
            f1, layer, t, comp, c = best
            vecs.append(c.float())
            conds.append({"layer": layer, "threshold": t, "comparator": comp, "f1": f1})
        self.condition_vectors_ = torch.stack(vecs)
        self.conditions_ = conds

    @staticmethod
    def prompt_states(model: SteerableModel, items: Inputs, layers: Sequence[int],
                      batch: Batch | None = None) -> dict[int, Tensor]:
        """The mean prompt state per input at each layer (one prompt pass per batch of 16)."""
        items = as_items(items)
        layers = sorted(set(layers))
        if batch is not None:
            return model.read(batch, layers, reduce="prompt_mean")
        out = {layer: torch.empty(len(items), model.hidden_size) for layer in layers}
        for s in range(0, len(items), 16):
            chunk = items[s:s + 16]
            images = [list(it.images) for it in chunk]
            b = model.encode([it.prompt for it in chunk], images if any(images) else None)
            got = model.read(b, layers, reduce="prompt_mean")
            for layer in layers:
                out[layer][s:s + len(chunk)] = got[layer]
        return out

    # ------------------------------------------------------------------ applying ----
    def decide(self, states: dict[int, Tensor]) -> Bool[Tensor, " batch"]:
        """Per row: whether the rule over the conditions holds, from mean prompt states by layer."""
        self.check_fitted()
        met = []
        for c, cond in zip(self.condition_vectors_, self.conditions_, strict=True):
            s = cast_score(states[cond["layer"]], c)
            met.append(s > cond["threshold"] if cond["comparator"] == "larger" else s < cond["threshold"])
        m = torch.stack(met)
        return (m.any(0) if self.rule == "any" else m.all(0)).cpu()

    def decisions(self, model: SteerableModel, items: Inputs, batch: Batch | None = None) -> Bool[Tensor, " batch"]:
        """Per input: whether it is steered."""
        self.check_model(model)
        return self.decide(self.prompt_states(model, items, [c["layer"] for c in self.conditions_], batch))

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        on = self.decisions(model, items)
        return on[:, None].float() * self.vector_[None, :]

    def steered_rows(self, model: SteerableModel, items: Inputs) -> list[int]:
        return [i for i, on in enumerate(self.decisions(model, items).tolist()) if on]

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None,
                     vectors: Float[Tensor, "batch d_model"] | None = None) -> Intervention | None:
        """Per-row vectors: the behaviour vector where the rule holds, zero elsewhere (decided from
        one prompt pass over ``batch``)."""
        self.check_model(model)
        a, pos = self._resolve(alpha, positions)
        if vectors is None:
            on = self.decisions(model, items, batch)
            vectors = on[:, None].float() * self.vector_[None, :]
        return Intervention.build(self.layer, vectors, alpha=a, positions=pos)

    # ------------------------------------------------------------------ persistence -
    def extra_state(self) -> dict[str, Any]:
        return {"conditions": self.conditions_}

    def load_extra_state(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        super().load_extra_state(state, tensors)
        self.conditions_ = [dict(c) for c in state.get("conditions", [])]
