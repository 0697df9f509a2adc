"""L2S's ``input_position="prompt_mean"`` against hand computations (a raw forward and a raw hook)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from reference import hook_generate
from steerlib import ContrastiveItem, SteerableModel
from steerlib.errors import DataError
from steerlib.steerers import L2S, extract_p2s_layers
from steerlib.steerers.l2s import INPUT_POSITIONS, SELECTIVE
from steerlib.testing import build_tiny


@pytest.fixture(scope="module")
def llama():
    t = build_tiny("llama")
    return t, SteerableModel(t.model, t.processor)


def _items(n: int = 8) -> list[ContrastiveItem]:
    return [ContrastiveItem(prompt=f"Question {i} about the {'cat' if i % 2 else 'weather'} " + "word " * (i % 3),
                            positive="I cannot help with that." if i % 2 else "Sure.",
                            negative="Sure, here is how." if i % 2 else "Sure.",
                            behavior="harmful" if i % 2 else "benign") for i in range(n)]


def _hand_mean(t, sm, prompt: str, layer: int) -> torch.Tensor:
    """The mean of output_hidden_states[layer + 1] over every token of the prompt run alone (no padding)."""
    b = sm.encode([prompt])
    assert bool(b.attention_mask.all())
    with torch.no_grad():
        hs = t.model(**b.inputs, output_hidden_states=True).hidden_states[layer + 1][0]
    return hs.mean(0)


def test_prompt_mean_inputs_and_extraction_equal_a_hand_mean(llama):
    """L2S.inputs and the shared P2S extraction (teacher-forced passes) both read the hand mean."""
    t, sm = llama
    items = _items(6)
    l2s = L2S(1, input_layer=0, input_position="prompt_mean", hidden=4, epochs=2, progress=False).fit(sm, items)
    h = l2s.inputs(sm, items, batch_size=4)  # padded, length-bucketed batches
    feats = extract_p2s_layers(sm, items, [1], input_layers={1: 0}, input_position="prompt_mean", progress=False)
    for i, it in enumerate(items):
        ref = _hand_mean(t, sm, it.prompt, 0)
        assert torch.allclose(h[i], ref, atol=1e-5), i
        assert torch.allclose(feats[1].h[i], ref, atol=1e-5), i  # type: ignore[index]
    last = L2S(1, input_layer=0, hidden=4, epochs=2, progress=False).fit(sm, items).inputs(sm, items)
    assert not torch.allclose(h, last, atol=1e-3)  # a different feature from the last token's


def test_prompt_mean_generation_equals_predict_then_hook(llama):
    """Steering with g(mean over the prompt) equals g applied by hand, then added by a raw hook."""
    t, sm = llama
    items = _items(8)
    l2s = L2S(1, input_layer=1, input_position="prompt_mean", hidden=8, epochs=3, lr=1e-2, progress=False).fit(sm, items)
    prompts = [items[0].prompt, items[3].prompt + " and several more words here"]
    g = l2s.generate_batch(sm, prompts, alpha=3.0, max_new_tokens=5)
    v = l2s.predict(torch.stack([_hand_mean(t, sm, p, 1) for p in prompts]))
    assert v.norm(dim=-1).min() > 0
    b = sm.encode(prompts)
    ref = hook_generate(t.model, t.model.model.layers[1], b.inputs, v, 3.0, b.attention_mask.bool(), True, 5,
                        t.tokenizer.pad_token_id)
    assert torch.equal(g.sequences, ref.sequences)


def test_input_position_is_checked():
    assert INPUT_POSITIONS == ("last_prompt", "last_prompt_no_gen", "prompt_mean")
    with pytest.raises(DataError, match="input_position must be one of"):
        L2S(0, input_position="first_token").fit_features(torch.randn(4, 8), torch.randn(4, 8))  # type: ignore[arg-type]


def test_selective_recipe_keeps_its_keys():
    """``L2S.selective`` is the recipe plus overrides."""
    s = L2S.selective(3, hidden=7)
    assert s.hidden == 7 and all(getattr(s, k) == v for k, v in SELECTIVE.items() if k != "hidden")
