"""The demo's shortcuts are exact: rows a steerer leaves unchanged are taken from the unsteered run."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from steerlib import ContrastiveItem, SteerableModel
from steerlib.demo import GenerationCache, _steered_rows
from steerlib.steerers import L2S, P2S, NoSteer
from steerlib.testing import build_tiny


@pytest.fixture(scope="module")
def model():
    t = build_tiny("llama")
    return SteerableModel(t.model, t.tokenizer)


def _items(n: int) -> list[ContrastiveItem]:
    return [ContrastiveItem(prompt=f"Prompt {i}: " + "word " * (i % 5), positive="No." if i % 2 else "Same",
                            negative="Yes." if i % 2 else "Same", behavior="harmful" if i % 2 else "benign")
            for i in range(n)]


def test_gated_rows_come_from_the_unsteered_run_and_equal_a_full_generation(model, tmp_path):
    items = _items(12)
    l2s = L2S(1, input_layer=1, hidden=8, epochs=3, lr=1e-2, progress=False).fit(model, items)
    norms = l2s.vectors(model, items).norm(dim=-1)
    ranked = norms.sort().values
    l2s.gate_norm_ = float(ranked[5] + ranked[6]) / 2  # half the rows gated, none near the threshold
    steered = _steered_rows(model, l2s, items)
    assert 0 < len(steered) < len(items)
    assert steered == [i for i in range(len(items)) if float(norms[i]) >= l2s.gate_norm_]

    cache = GenerationCache(tmp_path, batch_size=4, batch_tokens=None)
    base = cache.get(model, NoSteer().fit(model, []), items, 0.0, 6, "base")
    merged = cache.get(model, l2s, items, 8.0, 6, "l2s", rows=steered, base=base)
    full_texts, full_tokens = l2s.generate_tokens(model, items, alpha=8.0, max_new_tokens=6, batch_size=4)
    assert merged.tokens == full_tokens and merged.texts == full_texts
    assert any(merged.tokens[i] != base.tokens[i] for i in steered)  # steering did change something
    # cached: a second call reads the file instead of generating
    again = cache.get(model, l2s, items, 8.0, 6, "l2s", rows=steered, base=base)
    assert again == merged


def test_ungated_steerers_steer_every_row(model):
    items = _items(4)
    l2s = L2S(1, hidden=8, epochs=2, progress=False).fit(model, items)
    assert _steered_rows(model, l2s, items) == [0, 1, 2, 3]
    assert _steered_rows(model, NoSteer().fit(model, []), items) == [0, 1, 2, 3]
    # P2S: items with equal completions have z = 0 exactly and are left to the unsteered run
    assert _steered_rows(model, P2S(1, progress=False).fit(model, []), items) == [1, 3]
    assert torch.is_tensor(l2s.vectors(model, items))
