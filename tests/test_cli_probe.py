"""``steerlib probe``: its two per-layer scores against independent references (scikit-learn's ridge
classifier, a hand-computed cosine), and the command on a tiny model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from steerlib.app.cli import main
from steerlib.app.probe_cli import layer_scores, ridge_accuracy


def test_ridge_accuracy_equals_sklearn():
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 6, generator=g)
    y = torch.arange(90) % 3
    x[:, 0] += y * 0.8  # class signal in one feature
    xtr, ytr, xte, yte = x[:60], y[:60], x[60:], y[60:]
    scaler = preprocessing.StandardScaler().fit(xtr.numpy())
    for ridge in (1.0, 30.0):
        ref = sklearn_linear.RidgeClassifier(alpha=ridge).fit(scaler.transform(xtr.numpy()), ytr.numpy())
        want = float((ref.predict(scaler.transform(xte.numpy())) == yte.numpy()).mean())
        assert ridge_accuracy(xtr, ytr, xte, yte, ridge=ridge) == want
    assert 0.4 < want < 1.0  # the case is neither trivial nor hopeless


def test_layer_scores_cosine_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    h = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    beh = ["harmful", "harmful", "benign", "benign", "harmful", "benign"]
    s = layer_scores(z, h, beh, train=[0, 1, 2, 3], test=[4, 5])
    mean = torch.tensor([1.0, 0.5])  # harmful's mean on the training rows; benign's is zero: skipped
    want = float(torch.nn.functional.cosine_similarity(z[4], mean, dim=0))
    assert s["p2s_cosine"] == pytest.approx(want)
    assert s["chance"] == 0.5 and 0.0 <= s["separability"] <= 1.0


def test_probe_command_on_a_tiny_model(capsys):
    assert main(["probe", "--model", "tiny:llama", "--limit", "6", "--layers", "1,2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| layer | P2S cosine" in out and "| 1 |" in out and "| 2 |" in out and "most consistent" in out
    assert main(["probe", "--model", "tiny:llama", "--limit", "6", "--layers", "7", "--quiet"]) == 2
    assert "--layers" in capsys.readouterr().err
