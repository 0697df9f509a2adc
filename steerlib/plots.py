"""Pictures: steering vectors in 2D (PCA, coloured by behaviour) and alpha sweeps.

Plots are drawn with matplotlib's object-oriented API on an Agg canvas (no pyplot, no global
backend change, no display needed) and written as PNG files, atomically. matplotlib is needed
only here: ``pip install matplotlib`` (or ``pip install 'steerlib[demo]'``).
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import DataError, MissingDependencyError, NonFiniteError, ShapeMismatchError

__all__ = ["BEHAVIOR_COLORS", "ZERO_LABEL", "colors", "pca_2d", "plot_alpha_sweep", "plot_targets_and_predictions",
           "plot_vectors", "save_png", "targets_and_predictions_figure"]


def pca_2d(vectors: Float[Tensor, "n d"]) -> Float[Tensor, "n 2"]:
    """Project ``vectors`` on their first two principal components.

    Exact PCA by SVD of the centred data ``X - mean = U S V^T``: the coordinates are
    ``(X - mean) @ V[:, :2] = U[:, :2] * S[:2]``. Signs are made deterministic (the loading of
    largest magnitude in each component is positive). When the centred data has rank < 2 (or
    ``d == 1``) the missing coordinates are 0. Returns float32.

    Raises:
        ShapeMismatchError: ``vectors`` is not ``[n, d]`` with ``n >= 2``.
        NonFiniteError: NaN or infinite entries.
    """
    mean, basis = _pca_basis(vectors)
    x = vectors.detach().to("cpu", torch.float64)
    return ((x - mean) @ basis).to(torch.float32)


def _pca_basis(vectors: Tensor) -> tuple[Float[Tensor, "1 d"], Float[Tensor, "d 2"]]:
    """The mean and the first two principal directions (deterministic signs; zero columns for missing ones)."""
    if not isinstance(vectors, Tensor):
        raise ShapeMismatchError(f"vectors must be a torch.Tensor [n, d], got {type(vectors).__name__}.")
    if vectors.dim() != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 1:
        raise ShapeMismatchError(
            f"vectors has shape {tuple(vectors.shape)}; PCA needs a matrix [n, d] with at least 2 rows (one vector "
            "per row). Stack the vectors with torch.stack."
        )
    x = vectors.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise NonFiniteError("vectors contains NaN or infinite values; check how they were computed.")
    mean = x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    basis = torch.zeros(x.shape[1], 2, dtype=torch.float64)
    for j in range(min(2, s.shape[0])):
        if float(s[j]) <= 1e-12 * max(float(s[0]), 1e-300):
            continue  # a (numerically) zero component: leave the coordinate at 0
        sign = 1.0 if float(vh[j, int(vh[j].abs().argmax())]) >= 0 else -1.0
        basis[:, j] = sign * vh[j]
    return mean, basis


def _explained(vectors: Tensor) -> list[float]:
    x = vectors.detach().to("cpu", torch.float64)
    s = torch.linalg.svdvals(x - x.mean(0, keepdim=True))
    total = float((s**2).sum())
    return [float(s[j] ** 2) / total if total > 0 and j < s.shape[0] else 0.0 for j in range(2)]


def _figure(ncols: int = 1, size: tuple[float, float] = (6.0, 4.5)) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is installed in the test environment
        raise MissingDependencyError(
            "Plotting needs matplotlib: pip install matplotlib (or pip install 'steerlib[demo]')."
        ) from e
    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write the matplotlib figure ``fig`` as a PNG file via a temporary file and a rename; returns the path."""
    target = Path(path)
    if target.is_dir():
        raise DataError(f"{target} is a folder; give the path of a .png file to write.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def plot_vectors(vectors: Float[Tensor, "n d"], labels: Sequence[str], path: str | os.PathLike[str], *,
                 title: str | None = None) -> Path:
    """Scatter steering vectors (e.g. P2S vectors) in their first two principal components.

    Each point is one vector, coloured by its label (e.g. the behaviour), with a legend. The axes
    show the share of variance each component explains. Returns the PNG path written.

    Raises:
        ShapeMismatchError: ``labels`` does not give one label per vector, or bad ``vectors``.
    """
    labels = [str(x) for x in labels]
    if isinstance(vectors, Tensor) and vectors.dim() >= 1 and len(labels) != vectors.shape[0]:
        raise ShapeMismatchError(
            f"{len(labels)} labels for {vectors.shape[0]} vectors; give one label per vector (row)."
        )
    xy = pca_2d(vectors)
    var = _explained(vectors)
    fig, (ax,) = _figure()
    order = list(dict.fromkeys(labels))
    cmap = colors(len(order))
    for i, lab in enumerate(order):
        idx = [k for k, x in enumerate(labels) if x == lab]
        ax.scatter(xy[idx, 0].numpy(), xy[idx, 1].numpy(), s=28, alpha=0.8, color=cmap[i], label=f"{lab} ({len(idx)})",
                   edgecolors="none")
    ax.set_xlabel(f"PC1 ({100 * var[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * var[1]:.1f}% of variance)")
    ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    ax.set_title(title or f"{xy.shape[0]} vectors, PCA to 2D")
    ax.legend(title="label", fontsize="small", loc="best")
    return save_png(fig, path)


#: Colours of the text-safety behaviours in the vector pictures (others get tab10 colours after these).
BEHAVIOR_COLORS: dict[str, str] = {"harmful": "#d62728", "advice": "#1f77b4", "benign": "#2ca02c"}
#: The label of the zero vector (no steering) in :func:`targets_and_predictions_figure`.
ZERO_LABEL = "zero vector (unsteered)"
_SOURCES = {"P2S": ("o", "P2S target (o)"), "L2S": ("x", "L2S prediction (x)")}


def targets_and_predictions_figure(targets: Float[Tensor, "n d"], predictions: Float[Tensor, "n d"],
                                   behaviors: Sequence[str], *, title: str | None = None,
                                   segments: bool = True) -> Any:
    """P2S targets and L2S predictions of the same inputs in one PCA plane (a matplotlib Figure).

    Colour tells the behaviour (:data:`BEHAVIOR_COLORS`), the marker tells the source: ``o`` for a
    P2S target, ``x`` for L2S's prediction. The zero vector (what an unsteered input gets, e.g.
    every benign P2S target) is projected with the same PCA, drawn as a black star and labelled
    :data:`ZERO_LABEL`; with PCA's centring it is generally not at the origin. ``segments`` draws a
    faint line from each target to its prediction. The PCA is fitted on targets and predictions
    together.

    Raises:
        ShapeMismatchError: shapes differ, or not one behaviour per row.
    """
    behaviors = [str(b) for b in behaviors]
    if not isinstance(targets, Tensor) or not isinstance(predictions, Tensor) or targets.shape != predictions.shape:
        raise ShapeMismatchError(
            f"targets {tuple(getattr(targets, 'shape', ()))} and predictions {tuple(getattr(predictions, 'shape', ()))} "
            "must be tensors of the same shape [n, d] (row i: the P2S target and L2S's prediction of input i)."
        )
    if targets.dim() != 2 or len(behaviors) != targets.shape[0]:
        raise ShapeMismatchError(f"{len(behaviors)} behaviours for {tuple(targets.shape)} vectors; give one per row.")
    both = torch.cat([targets, predictions])
    mean, basis = _pca_basis(both)
    xy = ((both.detach().to("cpu", torch.float64) - mean) @ basis).numpy()
    zero = (-mean @ basis)[0].numpy()
    var = _explained(both)
    n = targets.shape[0]
    order = list(dict.fromkeys(behaviors))
    extra = iter(colors(10 + len(order))[3:])
    colour = {b: BEHAVIOR_COLORS.get(b) or next(extra) for b in order}
    fig, (ax,) = _figure(size=(7.0, 5.5))
    if segments:
        for i in range(n):
            ax.plot([xy[i, 0], xy[n + i, 0]], [xy[i, 1], xy[n + i, 1]], color=colour[behaviors[i]], lw=0.5,
                    alpha=0.25, zorder=1)
    for src, offset in (("P2S", 0), ("L2S", n)):
        marker, _ = _SOURCES[src]
        for b in order:
            idx = [offset + i for i, x in enumerate(behaviors) if x == b]
            style = ({"facecolors": "none", "edgecolors": colour[b], "linewidths": 1.2} if marker == "o"
                     else {"color": colour[b], "linewidths": 1.4})
            ax.scatter(xy[idx, 0], xy[idx, 1], s=44, marker=marker, alpha=0.85, zorder=2,
                       label=f"{src} {b}", **style)
    # the star under the points, so the (many) exactly-zero targets and gated predictions stay visible on it
    ax.scatter([zero[0]], [zero[1]], s=320, marker="*", color="black", zorder=1.5, label=ZERO_LABEL)
    centre = xy.mean(0)
    dx = 16 if zero[0] <= centre[0] else -16  # the label points into the plot, away from the frame and title
    dy = -16 if zero[1] >= centre[1] else 16
    ax.annotate(ZERO_LABEL, xy=(float(zero[0]), float(zero[1])), xytext=(dx, dy), textcoords="offset points",
                ha="left" if dx > 0 else "right", va="top" if dy < 0 else "bottom", fontsize=10,
                arrowprops={"arrowstyle": "-", "color": "black", "lw": 0.8},
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.6", "alpha": 0.9}, zorder=4)
    at_zero = [int((v.abs().sum(-1) == 0).sum()) for v in (targets, predictions)]
    if any(at_zero):
        ax.annotate(f"here: {at_zero[0]} P2S targets, {at_zero[1]} L2S predictions", xy=(float(zero[0]), float(zero[1])),
                    xytext=(dx, dy - 16 if dy < 0 else dy + 16), textcoords="offset points",
                    ha="left" if dx > 0 else "right", va="top" if dy < 0 else "bottom", fontsize=8, color="0.25")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="none", marker="s", ms=9, color=colour[b], label=f"{b} ({behaviors.count(b)})")
               for b in order]
    handles += [Line2D([], [], ls="none", marker=m, ms=8, color="0.3", mfc="none" if m == "o" else "0.3", label=lab)
                for m, lab in _SOURCES.values()]
    handles.append(Line2D([], [], ls="none", marker="*", ms=12, color="black", label=ZERO_LABEL))
    ax.legend(handles=handles, fontsize="small", loc="best", framealpha=0.9)
    ax.set_xlabel(f"PC1 ({100 * var[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * var[1]:.1f}% of variance)")
    ax.grid(alpha=0.25)
    ax.set_title(title or f"P2S targets (o) and L2S predictions (x) of {n} inputs, PCA to 2D")
    return fig


def plot_targets_and_predictions(targets: Float[Tensor, "n d"], predictions: Float[Tensor, "n d"],
                                 behaviors: Sequence[str], path: str | os.PathLike[str], *,
                                 title: str | None = None) -> Path:
    """Write :func:`targets_and_predictions_figure` as a PNG; returns the path."""
    return save_png(targets_and_predictions_figure(targets, predictions, behaviors, title=title), path)


def colors(n: int) -> list[Any]:
    """``n`` distinct colours (matplotlib's tab10, or tab20 beyond 10)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _number(v: Any, what: str) -> float:
    if isinstance(v, Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise DataError(f"{what} is {v!r}, not a number; sweep rows need numeric alpha and metric values.")
    return float(v)


def plot_alpha_sweep(rows: Sequence[Mapping[str, Any]], metric: str | Sequence[str], path: str | os.PathLike[str], *,
                     title: str | None = None, method_key: str = "method", alpha_key: str = "alpha") -> Path:
    """Plot metric against alpha, one line per method (one panel per metric).

    ``rows`` are dicts like ``{"method": "l2s", "alpha": 2.0, "refusal_rate": 0.8, ...}`` (the rows
    of ``steerlib compare``). Rows sharing a method and alpha are averaged. A method whose rows
    have no alpha (``None``: e.g. the unsteered or prompt baselines) is drawn as a dashed
    horizontal line. Rows without the metric (or with a NaN value) are skipped. Returns the PNG path.

    Raises:
        DataError: no rows, a metric no row has, or non-numeric values.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics:
        raise DataError("Give at least one metric name to plot.")
    rows = list(rows)
    if not rows:
        raise DataError("No rows to plot: pass the rows of an alpha sweep (dicts with method, alpha and metrics).")
    for m in metrics:
        if not any(m in r for r in rows):
            keys = sorted({k for r in rows for k in r} - {method_key, alpha_key})
            raise DataError(f"No row has metric {m!r}; the rows have {keys}. Pick one of those.")
    fig, axes = _figure(len(metrics))
    methods = list(dict.fromkeys(str(r.get(method_key, "?")) for r in rows))
    palette = dict(zip(methods, colors(len(methods))))
    for ax, m in zip(axes, metrics):
        swept: dict[str, dict[float, list[float]]] = {}
        flat: dict[str, list[float]] = {}
        for r in rows:
            if m not in r or r[m] is None:
                continue
            y = _number(r[m], f"{m} of method {r.get(method_key)!r}")
            if math.isnan(y):
                continue
            meth = str(r.get(method_key, "?"))
            a = r.get(alpha_key)
            if a is None:
                flat.setdefault(meth, []).append(y)
            else:
                swept.setdefault(meth, {}).setdefault(_number(a, f"{alpha_key} of method {meth!r}"), []).append(y)
        for meth, by_alpha in swept.items():
            xs = sorted(by_alpha)
            ys = [sum(by_alpha[x]) / len(by_alpha[x]) for x in xs]
            ax.plot(xs, ys, marker="o", ms=4, color=palette[meth], label=meth)
        for meth, ys in flat.items():
            ax.axhline(sum(ys) / len(ys), ls="--", lw=1.2, color=palette[meth], label=f"{meth} (no alpha)")
        ax.set_xlabel(alpha_key)
        ax.set_ylabel(m)
        ax.set_title(m if len(metrics) > 1 else (title or f"{m} vs {alpha_key}"))
        ax.grid(alpha=0.3)
        if swept or flat:
            ax.legend(fontsize="small", loc="best")
    if title and len(metrics) > 1:
        fig.suptitle(title)
    return save_png(fig, path)
