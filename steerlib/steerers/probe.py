"""Probe directions: the weight vector of a linear probe separating positive from negative activations
(steering-vectors' ``logistic_aggregator`` and ``linear_aggregator``).

For each training item the positive and the negative teacher-forced run give one activation each
at ``layer`` (reduced like P2S: ``completion_mean`` or ``end_of_turn``). A probe is fitted with
scikit-learn on ``X = [pos; neg]``, ``y = [1...; 0...]``:

* :class:`LogisticProbe` (``probe_logistic``): ``LogisticRegression(C=C, max_iter=max_iter)``;
* :class:`LinearProbe` (``probe_linear``): ``LinearRegression(fit_intercept=False)``.

The steering vector is the probe's coefficient vector, normalised and scaled to the mean norm of
the training differences ``pos - neg`` (as steering-vectors does), so ``alpha`` means what it
means for Mean-S. Items whose two completions are equal are left out (they would be one point
with both labels). scikit-learn is needed (``pip install scikit-learn``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import Unpack

from ..batching import length_batches
from ..data.items import ContrastiveItem, check_items
from ..engine import SteerableModel
from ..errors import DataError, MissingDependencyError
from ..intervention import check_layers
from ..progress import tqdm
from .base import Inputs, as_items
from .extract import P2SExtraction, check_reduction
from .p2s import P2SBased, P2SParams


def pos_neg_activations(model: SteerableModel, items: Sequence[ContrastiveItem], layer: int, *,
                        reduction: str = "completion_mean", batch_size: int = 8,
                        progress: bool = True) -> tuple[Float[Tensor, "n d_model"], Float[Tensor, "n d_model"]]:
    """The positive and the negative run's activation per item at ``layer`` (float32, CPU).

    ``completion_mean``: the mean over the forced completion; ``end_of_turn``: the last token of
    the closed turn (``sampled_mean`` is refused: it has no positive/negative pair of states)."""
    items = check_items(items, need_completions=True, what="probe item list")
    red = check_reduction(reduction)
    if red == "sampled_mean":
        raise DataError("Probe directions read one state per completion; use reduction='completion_mean' or "
                        "'end_of_turn', not 'sampled_mean'.")
    check_layers(layer, model.num_layers)
    close = red == "end_of_turn"
    target = "last_token" if close else "completion_mean"
    lengths = model.prompt_lengths([it.prompt for it in items], [len(it.images) for it in items])
    pos = torch.empty(len(items), model.hidden_size)
    neg = torch.empty(len(items), model.hidden_size)
    batches = length_batches(lengths, batch_size)
    for idx in tqdm(batches, desc="probe activations", unit="batch", disable=not progress or len(batches) < 2,
                    leave=False):
        chunk = [items[i] for i in idx]
        images = [list(it.images) for it in chunk] * 2
        batch = model.encode([it.prompt for it in chunk] * 2, images if any(images) else None,
                             completions=[it.positive for it in chunk] + [it.negative for it in chunk],
                             close_turn=close)
        h = model.read(batch, [layer], reduce=target)[layer].float().cpu()  # type: ignore[arg-type]
        pos[idx], neg[idx] = h[: len(chunk)], h[len(chunk):]
    return pos, neg


class _ProbeSteer(P2SBased):
    """Shared code of the probe steerers."""

    vectors_depend_on_alpha = False
    _tensors = ("vector_",)
    kind: ClassVar[str] = "logistic"

    def __init__(self, layer: int = 0, *, behaviors: Sequence[str] | None = None,
                 **shared: Unpack[P2SParams]) -> None:
        super().__init__(layer, **shared)
        self.behaviors = behaviors

    @property
    def extraction(self) -> P2SExtraction | None:
        return None  # it reads positive and negative states separately: its own passes

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, tuple[int | None, ...] | None]:
        return {"vector_": (hidden_size,)}

    def _check_params(self, model: SteerableModel) -> None:
        super()._check_params(model)
        if check_reduction(self.reduction) == "sampled_mean":
            raise DataError(f"{type(self).__name__} reads one state per completion; use reduction='completion_mean' "
                            "or 'end_of_turn', not 'sampled_mean'.")

    def estimator(self) -> Any:
        """The unfitted scikit-learn estimator."""
        raise NotImplementedError

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        items = check_items(items, need_completions=True)
        keep = [it for it in items if it.positive != it.negative
                and (self.behaviors is None or it.behavior in self.behaviors)]
        if len(keep) < 2:
            raise DataError(f"{type(self).__name__} needs at least 2 training items with differing completions"
                            f"{'' if self.behaviors is None else f' and a behaviour in {self.behaviors}'}; got "
                            f"{len(keep)}.")
        pos, neg = pos_neg_activations(model, keep, self.layer, reduction=self.reduction,
                                       batch_size=self.batch_size, progress=self.progress)
        self.fit_activations(pos, neg)

    def fit_activations(self, pos: Float[Tensor, "n d_model"], neg: Float[Tensor, "n d_model"]) -> Tensor:
        """Fit the probe on given activations; sets and returns ``vector_``."""
        x = torch.cat([pos, neg]).double().numpy()
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
        est = self.estimator().fit(x, y)
        coef = torch.as_tensor(np.asarray(est.coef_, dtype=np.float64).reshape(-1))
        if not bool(coef.any()):
            raise DataError(f"The {self.kind} probe's coefficients are all zero (the classes are not separable at "
                            f"layer {self.layer}); try another layer or more items.")
        scale = (pos.double() - neg.double()).norm(dim=-1).mean()
        self.vector_ = (coef / coef.norm() * scale).float()
        return self.vector_

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        self.check_model(model)
        return self.vector_[None, :].expand(len(as_items(items)), -1).clone()

    def static_vectors(self) -> dict[int, Float[Tensor, " d_model"]] | None:
        self.check_fitted()
        return {self.layer: self.vector_.clone()}


def _sklearn() -> Any:
    try:
        import sklearn.linear_model as lm
    except ImportError as e:  # pragma: no cover
        raise MissingDependencyError("Probe directions need scikit-learn: pip install scikit-learn") from e
    return lm


class LogisticProbe(_ProbeSteer):
    """``probe_logistic``: the normalised coefficients of a logistic regression of positive (1) vs
    negative (0) activations, scaled to the mean difference norm (steering-vectors' logistic aggregator).

    Args:
        layer: where the states are read and the vector added.
        C: inverse regularisation strength of ``LogisticRegression`` (scikit-learn's default 1.0).
        max_iter: solver iterations.
        behaviors: use only items with these behaviour labels.

    The other arguments are those of every P2S-based steerer (``reduction``: ``completion_mean``
    or ``end_of_turn``).
    """

    method = "probe_logistic"
    kind = "logistic"

    def __init__(self, layer: int = 0, *, C: float = 1.0, max_iter: int = 1000,
                 behaviors: Sequence[str] | None = None, **shared: Unpack[P2SParams]) -> None:
        super().__init__(layer, behaviors=behaviors, **shared)
        self.C = C
        self.max_iter = max_iter

    def estimator(self) -> Any:
        return _sklearn().LogisticRegression(C=self.C, max_iter=self.max_iter)


class LinearProbe(_ProbeSteer):
    """``probe_linear``: the normalised coefficients of a least-squares regression (no intercept) of
    the label (positive 1, negative 0) on the activations, scaled to the mean difference norm
    (steering-vectors' linear aggregator).

    Arguments: ``layer``, ``behaviors`` and those of every P2S-based steerer.
    """

    method = "probe_linear"
    kind = "linear"

    def estimator(self) -> Any:
        return _sklearn().LinearRegression(fit_intercept=False)
