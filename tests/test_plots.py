"""Plots: PCA coordinates against a hand SVD, PNG files written for vectors and alpha sweeps."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("matplotlib")

from steerlib.errors import DataError, NonFiniteError, ShapeMismatchError  # noqa: E402
from steerlib.plots import pca_2d, plot_alpha_sweep, plot_vectors  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    return data


def _clusters(n=30, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, d, generator=g) * 4
    labels = [["harmful", "benign", "unsure"][i % 3] for i in range(n)]
    x = torch.stack([centres[i % 3] + torch.randn(d, generator=g) for i in range(n)])
    return x, labels


def test_pca_2d_equals_hand_svd():
    x, _ = _clusters()
    xc = (x - x.mean(0)).double()
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    hand = xc @ vh[:2].T  # = U[:, :2] * S[:2]
    assert torch.allclose(hand, u[:, :2] * s[:2], atol=1e-9)
    got = pca_2d(x)
    assert got.shape == (30, 2) and got.dtype == torch.float32
    for j in range(2):  # equal up to the sign of each component
        sign = torch.sign((got[:, j].double() * hand[:, j]).sum())
        assert torch.allclose(got[:, j].double(), sign * hand[:, j], atol=1e-4)
    # centred, uncorrelated coordinates whose variances are the top squared singular values
    assert torch.allclose(got.double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-4)
    assert abs(float(got[:, 0].double() @ got[:, 1].double())) < 1e-2
    assert torch.allclose((got.double() ** 2).sum(0), s[:2] ** 2, rtol=1e-5)
    # deterministic signs, invariant to a shift of the data
    assert torch.equal(pca_2d(x), got)
    assert torch.allclose(pca_2d(x + 3.0), got, atol=1e-4)


def test_pca_2d_degenerate_and_bad_inputs():
    two = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])  # rank 1 after centring
    got = pca_2d(two)
    assert torch.allclose(got[:, 0].abs(), torch.tensor([2.5, 2.5])) and torch.equal(got[:, 1], torch.zeros(2))
    assert torch.equal(pca_2d(torch.ones(4, 5)), torch.zeros(4, 2))
    with pytest.raises(ShapeMismatchError, match="at least 2 rows"):
        pca_2d(torch.ones(1, 5))
    with pytest.raises(ShapeMismatchError):
        pca_2d(torch.ones(5))
    with pytest.raises(NonFiniteError):
        pca_2d(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_plot_vectors_writes_png(tmp_path):
    x, labels = _clusters()
    p = plot_vectors(x, labels, tmp_path / "sub" / "p2s.png", title="P2S vectors by behaviour")
    assert p == tmp_path / "sub" / "p2s.png"
    _png(p)
    assert sorted(q.name for q in p.parent.iterdir()) == ["p2s.png"]  # no temp file left
    with pytest.raises(ShapeMismatchError, match="one label per vector"):
        plot_vectors(x, labels[:-1], tmp_path / "bad.png")


def test_plot_alpha_sweep_writes_png(tmp_path):
    rows = [{"method": m, "alpha": a, "refusal": a * k, "fluency": 1 - a * k / 10}
            for m, k in (("mean", 0.1), ("l2s", 0.2)) for a in (0.0, 1.0, 2.0, 4.0)]
    rows += [{"method": "mean", "alpha": 1.0, "refusal": 0.3, "fluency": 0.9},  # averaged with its twin
             {"method": "none", "alpha": None, "refusal": 0.05, "fluency": 1.0},
             {"method": "prompt", "alpha": None, "refusal": 0.2}]
    one = _png(plot_alpha_sweep(rows, "refusal", tmp_path / "one.png"))
    two = _png(plot_alpha_sweep(rows, ["refusal", "fluency"], tmp_path / "two.png", title="sweep"))
    assert one != two
    with pytest.raises(DataError, match="No row has metric 'accuracy'.*fluency"):
        plot_alpha_sweep(rows, "accuracy", tmp_path / "x.png")
    with pytest.raises(DataError, match="not a number"):
        plot_alpha_sweep([{"method": "mean", "alpha": 1.0, "refusal": "high"}], "refusal", tmp_path / "x.png")
    with pytest.raises(DataError, match="No rows"):
        plot_alpha_sweep([], "refusal", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
