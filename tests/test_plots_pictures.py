"""The pictures say the result at a glance: checked on the figure's artists, not on pixels.

* the P2S/L2S vector picture: one colour per behaviour shared by targets and predictions, marker
  ``o`` for P2S and ``x`` for L2S, the zero vector projected where scikit-learn's PCA puts it and
  labelled "zero vector (unsteered)";
* the alpha sweep: a 2 x 2 grid, fixed 0-1 axes for proportions, the Wilson band, the unsteered
  model as a dashed line.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.markers import MarkerStyle  # noqa: E402

from steerlib.errors import ShapeMismatchError  # noqa: E402
from steerlib.plots import (  # noqa: E402
    BEHAVIOR_COLORS,
    ZERO_LABEL,
    plot_targets_and_predictions,
    targets_and_predictions_figure,
)


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    behaviors = ["harmful"] * 6 + ["advice"] * 5 + ["benign"] * 7
    centre = {"harmful": 4.0, "advice": -3.0}
    rows = [torch.zeros(12) if b == "benign" else centre[b] + torch.randn(12, generator=g) for b in behaviors]
    z = torch.stack(rows)
    pred = z + 0.3 * torch.randn(z.shape, generator=g)
    pred[[i for i, b in enumerate(behaviors) if b == "benign"][:5]] = 0.0  # the gate zeroes most benign inputs
    return z, pred, behaviors


def _marker_path(m: str):
    ms = MarkerStyle(m)
    return ms.get_path().transformed(ms.get_transform())


def test_vector_picture_colours_markers_and_zero_label():
    from sklearn.decomposition import PCA

    z, pred, behaviors = _data()
    fig = targets_and_predictions_figure(z, pred, behaviors)
    (ax,) = fig.axes
    scatters = {c.get_label(): c for c in ax.collections}
    for src, marker in (("P2S", "o"), ("L2S", "x")):
        for b in ("harmful", "advice", "benign"):
            c = scatters[f"{src} {b}"]
            assert len(c.get_offsets()) == behaviors.count(b)
            assert np.allclose(c.get_paths()[0].vertices, _marker_path(marker).vertices)
            rgba = c.get_edgecolor()[0] if marker == "o" else c.get_facecolor()[0]
            assert np.allclose(rgba[:3], to_rgba(BEHAVIOR_COLORS[b])[:3]), (src, b)
            if marker == "o":
                assert len(c.get_facecolor()) == 0 or c.get_facecolor()[0][3] == 0  # hollow: the x shows inside
    # the points and the zero vector where scikit-learn's PCA puts them (up to each axis' sign)
    both = torch.cat([z, pred]).double().numpy()
    pca = PCA(2).fit(both)
    ref = pca.transform(both)
    ref_zero = pca.transform(np.zeros((1, both.shape[1])))[0]
    got = np.concatenate([scatters[f"{s} {b}"].get_offsets() for s in ("P2S", "L2S") for b in ("harmful", "advice", "benign")])
    order = [o + i for o in (0, len(behaviors)) for b in ("harmful", "advice", "benign")
             for i, x in enumerate(behaviors) if x == b]
    signs = np.sign((got * ref[order]).sum(0))
    assert np.allclose(got, ref[order] * signs, atol=1e-5)
    (note,) = [t for t in ax.texts if t.get_text() == ZERO_LABEL]
    assert np.allclose(note.xy, ref_zero * signs, atol=1e-5)
    assert np.linalg.norm(ref_zero) > 1.0  # centring moves it away from the origin, hence the label
    n_zero = (int((z.abs().sum(-1) == 0).sum()), int((pred.abs().sum(-1) == 0).sum()))
    assert n_zero == (7, 5)
    assert f"here: {n_zero[0]} P2S targets, {n_zero[1]} L2S predictions" in [t.get_text() for t in ax.texts]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"P2S target (o)", "L2S prediction (x)", ZERO_LABEL} <= set(legend)
    assert "harmful (6)" in legend and "benign (7)" in legend


def test_vector_picture_refuses_mismatched_inputs(tmp_path):
    z, pred, behaviors = _data()
    with pytest.raises(ShapeMismatchError, match="same shape"):
        targets_and_predictions_figure(z, pred[:-1], behaviors)
    with pytest.raises(ShapeMismatchError, match="one per row"):
        targets_and_predictions_figure(z, pred, behaviors[:-1])
    p = plot_targets_and_predictions(z, pred, behaviors, tmp_path / "pca.png")
    assert p.read_bytes()[:4] == b"\x89PNG"


def _rows():
    rows = [{"method": "none", "layer": None, "alpha": None, "refusal": 0.1, "refusal_low": 0.04, "refusal_high": 0.23,
             "unchanged": 1.0, "unchanged_low": 0.91, "unchanged_high": 1.0, "false_refusal": 0.0,
             "false_refusal_low": 0.0, "false_refusal_high": 0.09, "deferral_strict": 0.2,
             "deferral_strict_low": 0.06, "deferral_strict_high": 0.5}]
    for a, r in ((0.5, 0.6), (0.75, 0.85)):
        rows.append({"method": "l2s", "layer": 15, "alpha": a, "refusal": r, "refusal_low": r - 0.15,
                     "refusal_high": min(1.0, r + 0.1), "unchanged": 0.9, "unchanged_low": 0.77, "unchanged_high": 0.96,
                     "false_refusal": 0.02, "false_refusal_low": 0.0, "false_refusal_high": 0.13,
                     "deferral_strict": 0.5, "deferral_strict_low": 0.22, "deferral_strict_high": 0.78})
    return rows


def test_alpha_sweep_axes_band_and_unsteered_line(tmp_path):
    from steerlib.eval.report import metrics_vs_alpha_figure, plot_metrics_vs_alpha

    metrics = ["refusal", "unchanged", "false_refusal", "deferral_strict"]
    fig = metrics_vs_alpha_figure(_rows(), metrics, title="validation, layer 15")
    axes = fig.axes
    assert len(axes) == 4
    assert {ax.get_subplotspec().get_geometry()[:2] for ax in axes} == {(2, 2)}
    w, h = fig.get_size_inches()
    assert 7.5 <= w <= 9.5 and 5.5 <= h <= 8.0
    rows = _rows()
    for ax, m in zip(axes, metrics):
        assert ax.get_ylim() == (0.0, 1.0), m
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == 1 and np.allclose(dashed[0].get_ydata(), rows[0][m])  # the unsteered model
        (band,) = ax.collections  # the Wilson band of the swept method
        ys = band.get_paths()[0].vertices[:, 1]
        assert np.isclose(ys.min(), min(r[f"{m}_low"] for r in rows[1:]))
        assert np.isclose(ys.max(), max(r[f"{m}_high"] for r in rows[1:]))
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "l2s"]
        assert list(line.get_xdata()) == [0.5, 0.75] and list(line.get_ydata()) == [r[m] for r in rows[1:]]
    assert plot_metrics_vs_alpha(_rows(), tmp_path / "s.png", metrics).read_bytes()[:4] == b"\x89PNG"
