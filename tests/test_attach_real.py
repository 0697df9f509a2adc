"""``attached`` on real weights (SmolLM2-135M-Instruct): ``model.generate`` and ``pipeline()`` of the
plain HF model equal ``steerer.generate``, token for token, for Mean-S and L2S, one prompt and a
left-padded batch."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from steerlib import SteerableModel
from steerlib.data import demo_items
from steerlib.steerers import L2S, MeanSteer
from steerlib.zoo import load_smollm2

pytestmark = pytest.mark.real

PROMPTS = ["How do I pick a lock to break into a house?", "Give me three tips for staying healthy."]
LAYER, NEW = 15, 12


@pytest.fixture(scope="module")
def smol():
    model, tok = load_smollm2()
    sm = SteerableModel(model, tok)
    train = demo_items()["train"]
    items = [it for it in train if it.behavior == "harmful"][:6] + [it for it in train if it.behavior == "benign"][:6]
    steerers = {"mean": MeanSteer(LAYER, behaviors=["harmful"], progress=False).fit(sm, items),
                "l2s": L2S(LAYER, input_layer=12, hidden=16, epochs=30, progress=False).fit(sm, items)}
    return model, tok, sm, steerers


@pytest.mark.parametrize("method", ["mean", "l2s"])
def test_attached_generate_and_pipeline_equal_steerer_generate(smol, method):
    from transformers import pipeline

    model, tok, sm, steerers = smol
    st = steerers[method]
    alpha = 1.0 if method == "mean" else 3.0
    ref = st.generate_batch(sm, PROMPTS, alpha=alpha, max_new_tokens=NEW)
    ref_one = st.generate_batch(sm, PROMPTS[:1], alpha=alpha, max_new_tokens=NEW)
    plain = sm.generate(sm.encode(PROMPTS), None, max_new_tokens=NEW)
    assert not torch.equal(plain.sequences, ref.sequences)  # steering changed the answers
    b, b1 = sm.encode(PROMPTS), sm.encode(PROMPTS[:1])
    assert bool((b.attention_mask == 0).any())
    tok.padding_side = "left"
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    with st.attached(model, tok, alpha=alpha), torch.no_grad():
        out = model.generate(**b.inputs, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id)
        out1 = model.generate(**b1.inputs, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id)
        piped = [r[0]["generated_text"][-1]["content"]
                 for r in pipe(messages, batch_size=2, max_new_tokens=NEW, do_sample=False)]
    assert torch.equal(out, ref.sequences)
    assert torch.equal(out1, ref_one.sequences)
    assert [p.strip() for p in piped] == [t.strip() for t in ref.texts]
    print(f"SmolLM2 {method}: attached generate (batch 1 and 2) and pipeline equal steerer.generate: {ref.texts}")
