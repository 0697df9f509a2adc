"""Length-bucketed batching: the helper's invariants, the engine's prompt lengths, and steered
generation that batches by length but returns texts in input order."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlib import ContrastiveItem, SteerableModel
from steerlib.batching import length_batches
from steerlib.errors import DataError
from steerlib.steerers import MeanSteer
from steerlib.testing import build_tiny


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=60), st.integers(1, 20), st.one_of(st.none(), st.integers(1, 2000)))
def test_length_batches_invariants(lengths, max_rows, max_tokens):
    batches = length_batches(lengths, max_rows, max_tokens)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every row exactly once
    assert [lengths[i] for i in flat] == sorted(lengths)  # shortest first
    for b in batches:
        assert 1 <= len(b) <= max_rows
        if max_tokens is not None and len(b) > 1:
            assert len(b) * max(lengths[i] for i in b) <= max_tokens
    # greedy: no batch could have taken the next batch's first row
    for b, nxt in zip(batches, batches[1:]):
        grown = len(b) + 1
        assert grown > max_rows or (max_tokens is not None and grown * lengths[nxt[0]] > max_tokens)


def test_length_batches_by_hand():
    assert length_batches([5, 1, 3, 100, 2], max_rows=2) == [[1, 4], [2, 0], [3]]
    # budget 12: rows of length 2, 2, 3 fit (3 x 3 = 9), a fourth of length 4 would need 16
    assert length_batches([4, 2, 3, 2, 50], max_rows=10, max_tokens=12) == [[1, 3, 2], [0], [4]]
    assert length_batches([], max_rows=4) == []


@pytest.mark.parametrize("kwargs", [dict(max_rows=0), dict(max_rows=4, max_tokens=0)])
def test_length_batches_rejects_bad_sizes(kwargs):
    with pytest.raises(DataError, match="at least 1"):
        length_batches([1, 2], **kwargs)


@pytest.fixture(scope="module")
def llama():
    t = build_tiny("llama")
    return SteerableModel(t.model, t.processor)


def test_prompt_lengths_match_encode(llama):
    prompts = ["hi", "a somewhat longer prompt about the weather today", "x " * 40]
    batch = llama.encode(prompts)
    assert llama.prompt_lengths(prompts) == batch.attention_mask.sum(1).tolist()


def test_generate_batches_by_length_in_input_order(llama):
    items = [ContrastiveItem(prompt=("word " * n).strip(), positive="No.", negative="Yes.", behavior="harmful")
             for n in (30, 2, 17, 5, 40, 1, 9)]
    st_ = MeanSteer(1).fit(llama, items)
    one_by_one = [st_.generate(llama, [it], max_new_tokens=4, alpha=2.0, progress=False)[0] for it in items]
    bucketed = st_.generate(llama, items, max_new_tokens=4, alpha=2.0, batch_size=3, max_batch_tokens=60,
                            progress=False)
    assert bucketed == one_by_one
