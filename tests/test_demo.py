"""The demo's shortcuts are exact: rows a steerer leaves unchanged are taken from the unsteered run.

The demo runs on :func:`steerlib.eval.compare.compare` with ``batching="length"`` and
``reuse_unsteered_rows=True``: only the rows a steerer changes (``Steerer.steered_rows``) are
generated, length-bucketed among themselves, and the others are copied from the unsteered run.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from steerlib import ContrastiveItem, SteerableModel
from steerlib.app.demo import TABLE_STYLE, scores
from steerlib.eval import markdown_table
from steerlib.eval.compare import compare
from steerlib.eval.metrics import strip_trailing_pad
from steerlib.eval.store import CACHE_FILE, GEN_KEY, JsonlCache
from steerlib.steerers import L2S, P2S, NoSteer
from steerlib.testing import build_tiny


@pytest.fixture(scope="module")
def model():
    t = build_tiny("llama")
    return SteerableModel(t.model, t.tokenizer)


def _items(n: int) -> list[ContrastiveItem]:
    return [ContrastiveItem(prompt=f"Prompt {i}: " + "word " * (i % 5), positive="No." if i % 2 else "Same",
                            negative="Yes." if i % 2 else "Same", behavior="harmful" if i % 2 else "benign",
                            id=f"item-{i}")
            for i in range(n)]


def _outputs(out, method: str, config: str, items) -> tuple[list[str], list[list[int]]]:
    recs = JsonlCache(out / CACHE_FILE, GEN_KEY, repair=False).records
    got = [recs[(method, config, it.id)] for it in items]
    return [r["text"] for r in got], [r["token_ids"] for r in got]


def test_gated_rows_come_from_the_unsteered_run_and_equal_a_full_generation(model, tmp_path):
    items = _items(12)
    l2s = L2S(1, input_layer=1, hidden=8, epochs=3, lr=1e-2, progress=False).fit(model, items)
    norms = l2s.vectors(model, items).norm(dim=-1)
    ranked = norms.sort().values
    l2s.gate_norm_ = float(ranked[5] + ranked[6]) / 2  # half the rows gated, none near the threshold
    steered = l2s.steered_rows(model, items)
    assert 0 < len(steered) < len(items)
    assert steered == [i for i in range(len(items)) if float(norms[i]) >= l2s.gate_norm_]

    kw = {"max_new_tokens": 6, "batch_size": 4, "batching": "length", "reuse_unsteered_rows": True, "progress": False}
    res = compare(model, [], items, {"none": NoSteer().fit(model, []), "l2s": l2s}, [8.0], out_dir=tmp_path, **kw)
    assert res.n_generated == len(items) + len(steered) and res.n_copied == len(items) - len(steered)
    base = _outputs(tmp_path, "none", res.row("none")["config"], items)
    merged = _outputs(tmp_path, "l2s", res.row("l2s")["config"], items)
    full_texts, full_tokens = l2s.generate_tokens(model, items, alpha=8.0, max_new_tokens=6, batch_size=4)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.tokenizer.eos_token_id
    assert merged[1] == [strip_trailing_pad(t, pad) for t in full_tokens] and merged[0] == full_texts
    assert any(merged[1][i] != base[1][i] for i in steered)  # steering did change something
    assert all(merged[1][i] == base[1][i] for i in range(len(items)) if i not in steered)
    # cached: a second call reads the store instead of generating
    again = compare(model, [], items, {"none": NoSteer().fit(model, []), "l2s": l2s}, [8.0], out_dir=tmp_path, **kw)
    assert again.n_generated == 0 and again.n_copied == 0 and again.rows == res.rows
    assert _outputs(tmp_path, "l2s", again.row("l2s")["config"], items) == merged


def test_ungated_steerers_steer_every_row(model):
    items = _items(4)
    l2s = L2S(1, hidden=8, epochs=2, progress=False).fit(model, items)
    assert l2s.steered_rows(model, items) == [0, 1, 2, 3]
    assert NoSteer().fit(model, []).steered_rows(model, items) == []  # it changes nothing
    # P2S: items with equal completions have z = 0 exactly and are left to the unsteered run
    assert P2S(1, progress=False).fit(model, []).steered_rows(model, items) == [1, 3]
    assert torch.is_tensor(l2s.vectors(model, items))


def test_the_demo_table_is_the_report_table_in_the_demo_style():
    row = {"method": "L2S", "layer": 15, "alpha": 0.75, "n": 124,
           "refusal": 53 / 60, "refusal_low": 0.78, "refusal_high": 0.94, "refusal_n": 60,
           "unchanged": 0.9, "unchanged_low": 0.77, "unchanged_high": 0.96, "unchanged_n": 40,
           "false_refusal": 0.05, "false_refusal_low": 0.01, "false_refusal_high": 0.17, "false_refusal_n": 40,
           "deferral_strict": 0.375, "deferral_strict_low": 0.21, "deferral_strict_high": 0.57, "deferral_strict_n": 24,
           "ppl_median": 4.4}
    base = {"method": "no steering", "layer": None, "alpha": None, "refusal": 0.27, "refusal_low": 0.17,
            "refusal_high": 0.39, "refusal_n": 60, "ppl_median": 2.1}
    table = markdown_table([base, row], ["refusal", "unchanged", "false_refusal", "deferral_strict", "ppl_median"],
                           style=TABLE_STYLE)
    assert table.splitlines() == [
        "| method | layer | alpha | harmful refused | benign unchanged (32 tok) | benign falsely refused "
        "| advice deferred (strict) | median perplexity |",
        "|---|---|---|---|---|---|---|---|",
        "| no steering | - | - | 0.27 [0.17, 0.39] | - | - | - | 2.1 |",
        "| L2S | 15 | 0.75 | 0.88 [0.78, 0.94] | 0.90 [0.77, 0.96] | 0.05 [0.01, 0.17] | 0.38 [0.21, 0.57] | 4.4 |",
    ]
    s = scores(row)
    assert s["harmful_refusal"] == {"value": 53 / 60, "n": 60, "ci95": [0.78, 0.94]}
    assert list(s) == ["harmful_refusal", "advice_deferral_strict", "benign_unchanged", "benign_false_refusal"]
    assert scores(base)["benign_unchanged"]["n"] == 0
