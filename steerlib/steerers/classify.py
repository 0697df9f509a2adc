"""Classify-then-steer: the strong input-dependent baseline L2S must beat.

The input's hidden state (the same feature g reads: ``input_layer`` at ``input_position``) is
classified into a behaviour, and that behaviour's mean P2S vector is added (exactly zero for a
"leave unchanged" behaviour whose completions are equal). The classifier is a logistic
regression (scikit-learn, ``classifier="logistic"``) or the nearest class centroid
(``"centroid"``); both are stored as a linear score ``h @ W.T + b`` whose argmax is the class, so
the prediction runs inside the generation pass like L2S's g.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import Unpack

from ..data.items import ContrastiveItem
from ..engine import Batch, SteerableModel
from ..errors import DataError, MissingDependencyError
from ..intervention import Intervention, check_layers
from ..positions import SOURCE_POSITIONS, SourcePosition, Where
from .base import Inputs, as_items
from .p2s import P2SBased, P2SParams

Classifier = Literal["logistic", "centroid"]


class ClassifySteer(P2SBased):
    """Classify the input into a behaviour, add that behaviour's mean P2S vector.

    Args:
        layer: where the vector is added.
        input_layer: where the classified state is read (default ``layer``).
        input_position: ``"last_prompt"`` or ``"last_prompt_no_gen"`` (as L2S).
        classifier: ``"logistic"`` (``LogisticRegression(C=C, max_iter=max_iter)``) or ``"centroid"``.
        C, max_iter: the logistic regression's settings.

    The other arguments are those of every P2S-based steerer; it shares L2S's extraction (targets
    and inputs from the same passes).
    """

    method = "classify"
    vectors_depend_on_alpha = False
    _tensors = ("weight_", "bias_", "means_")

    def __init__(self, layer: int = 0, *, input_layer: int | None = None,
                 input_position: SourcePosition = "last_prompt", classifier: Classifier = "logistic",
                 C: float = 1.0, max_iter: int = 1000, **shared: Unpack[P2SParams]) -> None:
        super().__init__(layer, **shared)
        self.input_layer = input_layer
        self.input_position = input_position
        self.classifier = classifier
        self.C = C
        self.max_iter = max_iter

    @property
    def source_layer(self) -> int:
        return self.layer if self.input_layer is None else self.input_layer

    def input_read(self) -> tuple[int, SourcePosition] | None:
        return self.source_layer, self.input_position

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, tuple[int | None, ...] | None]:
        return {"weight_": (None, hidden_size), "bias_": (None,), "means_": (None, hidden_size)}

    def _check_settings(self) -> None:
        super()._check_settings()
        from .params import check_choice, check_int, check_real

        check_choice(self, "classifier", ("logistic", "centroid"))
        check_real(self, "C", minimum=0.0, open_min=True)
        check_int(self, "max_iter", minimum=1)

    def _check_params(self, model: SteerableModel) -> None:
        super()._check_params(model)
        check_layers(self.source_layer, model.num_layers)
        if self.input_position not in SOURCE_POSITIONS:
            raise DataError(f"input_position must be one of {SOURCE_POSITIONS}, got {self.input_position!r}.")
        if self.classifier not in ("logistic", "centroid"):
            raise DataError(f"classifier must be 'logistic' or 'centroid', got {self.classifier!r}.")

    # ------------------------------------------------------------------ fitting -----
    def _learn(self, items: list[ContrastiveItem], z: Tensor, h: Tensor | None) -> None:
        if h is None:
            raise DataError("ClassifySteer needs the input states h (at input_layer).")
        self.fit_features(h, z, [it.behavior for it in items])

    def fit_features(self, h: Float[Tensor, "n d_model"], z: Float[Tensor, "n d_model"],
                     behaviors: Sequence[str]) -> "ClassifySteer":
        """Fit the classifier on states ``h`` and the per-behaviour mean of targets ``z``."""
        classes = sorted(set(behaviors))
        y = np.array([classes.index(b) for b in behaviors])
        d = h.shape[1]
        self.classes_ = classes
        self.means_ = torch.stack([z[torch.as_tensor(y == k)].mean(0) for k in range(len(classes))]).float()
        x = h.double().numpy()
        if len(classes) == 1:
            w, b = np.zeros((1, d)), np.zeros(1)
        elif self.classifier == "centroid":
            c = np.stack([x[y == k].mean(0) for k in range(len(classes))])
            w, b = 2 * c, -(c ** 2).sum(1)  # argmax of -|h - c|^2 = argmax of 2 h.c - |c|^2
        else:
            est = self.estimator().fit(x, y)
            w, b = np.asarray(est.coef_, dtype=np.float64), np.asarray(est.intercept_, dtype=np.float64)
            if len(classes) == 2:  # one score: class 1 when h.w + b > 0
                w, b = np.concatenate([np.zeros((1, d)), w]), np.concatenate([np.zeros(1), b])
        self.weight_ = torch.as_tensor(w, dtype=torch.float64)
        self.bias_ = torch.as_tensor(b, dtype=torch.float64)
        return self

    def estimator(self) -> Any:
        try:
            from sklearn.linear_model import LogisticRegression
        except ImportError as e:  # pragma: no cover
            raise MissingDependencyError("classifier='logistic' needs scikit-learn: pip install scikit-learn") from e
        return LogisticRegression(C=self.C, max_iter=self.max_iter)

    # ------------------------------------------------------------------ applying ----
    def classify(self, h: Float[Tensor, "batch d_model"]) -> Tensor:
        """The class index of each row of ``h``."""
        self.check_fitted()
        scores = h.double() @ self.weight_.to(h.device).T + self.bias_.to(h.device)
        return scores.argmax(-1)

    def predict(self, h: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_model"]:
        """The mean P2S vector of each row's predicted behaviour (in h's dtype and device)."""
        return self.means_.to(h.device)[self.classify(h)].to(h.dtype)

    def inputs(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        """The classified states (prompt-only passes that stop at ``input_layer``)."""
        items = as_items(items)
        h = torch.empty(len(items), model.hidden_size)
        for s in range(0, len(items), 32):
            chunk = items[s:s + 32]
            images = [list(it.images) for it in chunk]
            batch = model.encode([it.prompt for it in chunk], images if any(images) else None)
            h[s:s + len(chunk)] = model.read(batch, [self.source_layer], reduce=self.input_position)[self.source_layer]
        return h

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        self.check_model(model)
        return self.predict(self.inputs(model, items))

    def steered_rows(self, model: SteerableModel, items: Inputs) -> list[int]:
        """The inputs classified into a behaviour whose mean vector is not zero."""
        v = self.vectors(model, items)
        return [i for i in range(v.shape[0]) if bool(v[i].any())]

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None,
                     vectors: Float[Tensor, "batch d_model"] | None = None) -> Intervention | None:
        """The classifier inside the generation pass (or ``vectors`` from :meth:`vectors`, reused)."""
        self.check_model(model)
        a, pos = self._resolve(alpha, positions)
        if vectors is not None:
            return Intervention.build(self.layer, vectors, alpha=a, positions=pos)
        return Intervention.build(self.layer, predictor=self.predict, source_layer=self.source_layer,
                                  source_position=self.input_position, alpha=a, positions=pos)

    # ------------------------------------------------------------------ persistence -
    def extra_state(self) -> dict[str, Any]:
        return {"classes": list(self.classes_)}

    def load_extra_state(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        super().load_extra_state(state, tensors)
        self.classes_ = list(state.get("classes", []))
