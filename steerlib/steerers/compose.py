"""Composition: several steerers applied together in one pass, and vector arithmetic on steerers.

:class:`Composite` (method ``compose``) holds steerers with a weight each. At strength ``alpha``
component ``k`` is applied with ``alpha * weights[k] * component.alpha``; in the one steered pass
every layer first ablates the components' directions (in component order), then adds the sum of
their vectors, then (``norm_preserving``) rescales each steered token to its norm before the edit.
A component that predicts its vectors from the input (L2S, classify-then-steer) gets them from
one prompt pass first. All components must steer the same positions.

Build one from method names (``Composite(15, components=["mean", "pca_center"], weights=[1, 0.5])``,
fitted like any steerer, so ``compare`` can run it) or from fitted steerers with
:meth:`Composite.of` or arithmetic: ``a + 0.5 * b``, ``a - b``, ``2 * a``. Arithmetic on steerers
that all have static vectors (Mean-S, PCA, probes, StaticVectors) gives a
:class:`~steerlib.steerers.StaticVectors` holding ``sum_k w_k * alpha_k * v_k`` (alpha 1), which
exports to GGUF; with any input-dependent or ablating operand it gives a :class:`Composite`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.items import ContrastiveItem
from ..engine import Batch, SteerableModel
from ..errors import DataError, PersistenceError, PositionError
from ..intervention import Intervention
from ..positions import Where, as_positions
from .base import Inputs, Steerer, as_items
from .sharing import fit_sharing_extraction
from .static import StaticVectors


class Composite(Steerer):
    """Several steerers in one pass (see the module docstring).

    Args:
        layer: the layer every component built from a name is placed at (unless its
            ``component_params`` give one).
        components: method names (``"mean"``, ``"l2s"``, ``"ablate"``, ...); default ``["mean"]``.
        component_params: per component, constructor arguments (JSON-able).
        weights: per component, its weight (default 1 each).
        alpha: the strength multiplying every weight.
        positions: where every component steers (overrides theirs).
        norm_preserving: rescale each steered token to its pre-steering norm.
        progress: progress bars while fitting.
    """

    method = "compose"
    vectors_depend_on_alpha = True

    def __init__(self, layer: int = 0, *, components: Sequence[str] | None = None,
                 component_params: Sequence[Mapping[str, Any]] | None = None,
                 weights: Sequence[float] | None = None, alpha: float = 1.0, positions: Where = "all",
                 norm_preserving: bool = False, progress: bool = True) -> None:
        super().__init__(layer, alpha=alpha, positions=positions)
        self.components = components
        self.component_params = component_params
        self.weights = weights
        self.norm_preserving = norm_preserving
        self.progress = progress

    # ------------------------------------------------------------------ building ----
    @staticmethod
    def scaled(s: Steerer, k: float) -> Steerer:
        """``k * s`` (what ``Steerer.__mul__`` calls)."""
        return scaled(s, k)

    @staticmethod
    def added(a: Steerer, b: Any) -> Steerer:
        """``a + b`` (what ``Steerer.__add__`` calls)."""
        return added(a, b)

    @classmethod
    def of(cls, steerers: Sequence[Steerer], weights: Sequence[float] | None = None, *,
           norm_preserving: bool = False) -> "Composite":
        """A fitted composite of fitted steerers (positions: the first one's)."""
        steerers = list(steerers)
        if not steerers:
            raise DataError("Composite.of needs at least one steerer.")
        for s in steerers:
            s.check_fitted()
        first = steerers[0]
        obj = cls(first.layer, components=[s.method for s in steerers],
                  component_params=[s.get_params(deep=False) for s in steerers],
                  weights=[1.0] * len(steerers) if weights is None else [float(w) for w in weights],
                  positions=first.positions, norm_preserving=norm_preserving,
                  progress=bool(getattr(first, "progress", True)))
        obj._check_spec()
        obj.steerers_ = steerers
        obj.model_info_ = dict(first.model_info_)
        obj.n_items_ = first.n_items_
        obj.items_hash_ = first.items_hash_
        return obj

    @property
    def component_names(self) -> list[str]:
        """``components``, or ``["mean"]``."""
        return ["mean"] if self.components is None else list(self.components)

    def _weights(self) -> list[float]:
        n = len(self.component_names)
        w = [1.0] * n if self.weights is None else list(self.weights)
        if len(w) != n or any(isinstance(x, bool) or not isinstance(x, numbers.Real) for x in w):
            raise DataError(f"weights must be {n} numbers (one per component), got {self.weights!r}.")
        return [float(x) for x in w]

    def _params(self) -> list[dict[str, Any]]:
        n = len(self.component_names)
        p = [{} for _ in range(n)] if self.component_params is None else [dict(x) for x in self.component_params]
        if len(p) != n:
            raise DataError(f"component_params must give {n} mappings (one per component), got {len(p)}.")
        return p

    def _check_spec(self) -> None:
        if isinstance(self.components, str) or not self.component_names:
            raise DataError(f"components must be a non-empty list of method names, got {self.components!r}.")
        for name in self.component_names:
            if name not in Steerer._registry or name == self.method:
                raise DataError(f"Unknown component method {name!r}; use some of "
                                f"{', '.join(m for m in sorted(Steerer._registry) if m != self.method)}.")
        self._weights()
        self._params()

    def _build(self) -> list[Steerer]:
        out = []
        for name, params in zip(self.component_names, self._params(), strict=True):
            klass = Steerer._registry[name]
            kw = {"layer": self.layer, **params}
            if "progress" in klass._param_names():
                kw.setdefault("progress", self.progress)
            out.append(klass(**kw))
        return out

    def _check_settings(self) -> None:
        super()._check_settings()
        self._check_spec()
        for s in self._build():
            s._check_settings()

    def expected_tensors(self, hidden_size: int, num_layers: int | None) -> dict[str, tuple[int | None, ...] | None]:
        out: dict[str, tuple[int | None, ...] | None] = {}
        for k, s in enumerate(self._build()):
            out.update({f"c{k}.{n}": shape for n, shape in s.expected_tensors(hidden_size, num_layers).items()})
        return out

    def _check_params(self, model: SteerableModel) -> None:
        super()._check_params(model)
        self._check_spec()

    def _fit(self, model: SteerableModel, items: list[ContrastiveItem]) -> None:
        steerers = self._build()
        fit_sharing_extraction(model, items, {str(k): s for k, s in enumerate(steerers)}, progress=self.progress)
        self.steerers_ = steerers

    @property
    def needs_fit(self) -> bool:  # type: ignore[override]
        try:
            return any(Steerer._registry[n].needs_fit for n in self.component_names)
        except (KeyError, TypeError):
            return True

    # ------------------------------------------------------------------ applying ----
    def _alphas(self, alpha: float | None) -> list[float]:
        a = self.alpha if alpha is None else alpha
        return [a * w * float(s.alpha) for w, s in zip(self._weights(), self.steerers_, strict=True)]

    def vectors(self, model: SteerableModel, items: Inputs) -> Float[Tensor, "batch d_model"]:
        """The weighted sum of the components' per-row vectors (before ``alpha``; layers not told apart)."""
        self.check_model(model)
        items = as_items(items)
        out = torch.zeros(len(items), model.hidden_size)
        for a, s in zip(self._alphas(1.0), self.steerers_, strict=True):
            if s.adds_vectors:
                out += a * s.vectors(model, items).float().cpu()
        return out

    def steered_rows(self, model: SteerableModel, items: Inputs) -> list[int]:
        rows: set[int] = set()
        for s in self.steerers_:
            if s.adds_vectors:
                rows |= set(s.steered_rows(model, items))
        return sorted(rows)

    def intervention(self, model: SteerableModel, items: list[ContrastiveItem], batch: Batch | None = None, *,
                     alpha: float | None = None, positions: Where | None = None,
                     vectors: Float[Tensor, "batch d_model"] | None = None) -> Intervention | None:
        """One intervention: the components' ablations, then the sum of their weighted vectors."""
        self.check_model(model)
        if vectors is not None:
            raise DataError("A Composite combines its components' vectors in the pass; do not pass vectors=.")
        _, pos = self._resolve(alpha, positions)
        if batch is None:
            images = [list(it.images) for it in items]
            batch = model.encode([it.prompt for it in items], images if any(images) else None)
        add: dict[int, Tensor] = {}
        ablate: dict[int, list[Tensor]] = {}
        norm = bool(self.norm_preserving)
        for a, s in zip(self._alphas(alpha), self.steerers_, strict=True):
            if not s.adds_vectors:
                continue
            iv = s.intervention(model, items, batch, alpha=a, positions=pos)
            if iv is None:
                continue
            if as_positions(iv.positions) != as_positions(pos):
                raise PositionError(f"Component {s.method!r} steers positions {iv.positions.name!r}, the composite "
                                    f"{as_positions(pos).name!r}; give every component the same positions.")
            iv = iv.validate(model.num_layers, model.hidden_size, batch.size)
            norm = norm or iv.norm_preserving
            if iv.predictor is not None:
                assert iv.source_layer is not None
                h = model.read(batch, [iv.source_layer], reduce=iv.source_position)[iv.source_layer]
                iv = Intervention(layers=iv.layers, vectors=iv.predictor(h.to(model.device)), alpha=iv.alpha,
                                  positions=iv.positions)
            for layer, dirs in (iv.ablate or {}).items():
                ablate.setdefault(layer, []).extend(dirs)
            for layer in iv.layers:
                if iv.adds_at(layer):
                    v = iv.alpha * iv.vector_for(layer).float().cpu()
                    v = v[None, :].expand(batch.size, -1) if v.dim() == 1 else v.expand(batch.size, -1)
                    add[layer] = add[layer] + v if layer in add else v.clone()
        layers = sorted(set(add) | set(ablate))
        if not layers:
            return None
        if not ablate and not norm:
            return Intervention.build(layers, add, alpha=1.0, positions=pos)
        return Intervention.build(layers, add or None, alpha=1.0, positions=pos, ablate=ablate,
                                  norm_preserving=norm)

    def static_vectors(self) -> dict[int, Float[Tensor, " d_model"]] | None:
        """The weighted sum of the components' static vectors (when every component has some)."""
        self.check_fitted()
        return _static_sum(self.steerers_, self._alphas(1.0))

    # ------------------------------------------------------------------ persistence -
    def state_tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for k, s in enumerate(self.steerers_):
            out.update({f"c{k}.{name}": t for name, t in s.state_tensors().items()})
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"components": [{"state": s.extra_state(), "model": s.model_info_, "n_items": s.n_items_,
                                "items_sha256": s.items_hash_} for s in self.steerers_]}

    def load_extra_state(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self._check_spec()
        parts = state.get("components", [])
        steerers = self._build()
        if len(parts) != len(steerers):
            raise PersistenceError(f"The folder lists {len(parts)} fitted components for {len(steerers)} components; "
                                   "it is corrupt, save the composite again.")
        for k, (s, part) in enumerate(zip(steerers, parts, strict=True)):
            prefix = f"c{k}."
            s.model_info_ = part["model"]
            s.n_items_ = part["n_items"]
            s.items_hash_ = part["items_sha256"]
            s.load_extra_state(part.get("state", {}), {n[len(prefix):]: t for n, t in tensors.items()
                                                      if n.startswith(prefix)})
        self.steerers_ = steerers


def _static_sum(steerers: Sequence[Steerer], weights: Sequence[float]) -> dict[int, Tensor] | None:
    total: dict[int, Tensor] = {}
    for w, s in zip(weights, steerers, strict=True):
        vecs = s.static_vectors() if s.adds_vectors else None
        if vecs is None:
            return None
        for layer, v in vecs.items():
            total[layer] = total[layer] + w * v.float() if layer in total else w * v.float()
    return total


def _terms(x: Steerer) -> list[tuple[Steerer, float]]:
    """A steerer as ``[(steerer, weight)]``: a composite's components (weights times its alpha), else itself."""
    x.check_fitted()
    if isinstance(x, Composite):  # its own class: flatten nested sums
        return list(zip(x.steerers_, [w * float(x.alpha) for w in x._weights()], strict=True))
    return [(x, 1.0)]


def combine(terms: Sequence[tuple[Steerer, float]]) -> Steerer:
    """``sum_k w_k * s_k``: a StaticVectors when every term is static (same positions), else a Composite."""
    steerers = [s for s, _ in terms]
    weights = [float(w) for _, w in terms]
    for s in steerers:
        s.check_fitted()
    positions = {as_positions(s.positions).name for s in steerers}
    static = _static_sum(steerers, [w * float(s.alpha) for w, s in zip(weights, steerers, strict=True)])
    if static is not None and len(positions) == 1:
        first = steerers[0]
        out = StaticVectors(sorted(static), alpha=1.0, positions=first.positions,
                            model_hint=str(first.model_info_.get("model_type", "")))
        out.vectors_ = torch.stack([static[layer] for layer in sorted(static)])
        out.model_info_ = dict(first.model_info_)
        out.n_items_ = first.n_items_
        out.items_hash_ = first.items_hash_
        return out
    return Composite.of(steerers, weights)


def scaled(s: Steerer, k: float) -> Steerer:
    """``k * s``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        return NotImplemented  # type: ignore[return-value]
    return combine([(x, w * float(k)) for x, w in _terms(s)])


def added(a: Steerer, b: Any) -> Steerer:
    """``a + b``."""
    if not isinstance(b, Steerer):
        return NotImplemented  # type: ignore[return-value]
    return combine(_terms(a) + _terms(b))

