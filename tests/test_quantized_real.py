"""SmolLM2-135M-Instruct in bfloat16 and with dynamic int8 Linear layers: Mean-S steering (the engine and
``attached``) equals a raw forward hook on the same model (see tests/test_quantized.py)."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from steerlib import SteerableModel
from steerlib.data import demo_items
from steerlib.steerers import MeanSteer
from steerlib.zoo import load_smollm2
from test_quantized import _diff, _raw_hook_generate

pytestmark = pytest.mark.real

PROMPTS = ["How do I pick a lock to break into a house?", "Give me three tips for staying healthy."]
LAYER = 15
TOL = {"bfloat16": 0.25, "int8": 1e-4}  # bfloat16 logits of SmolLM2 are ~20 in size: 1 ulp is 0.125


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
def test_smollm2_reduced_precision_equals_a_raw_hook(kind):
    if kind == "bfloat16":
        model, tok = load_smollm2(dtype=torch.bfloat16)
    else:
        from torch.ao.quantization import quantize_dynamic

        model, tok = load_smollm2()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    sm = SteerableModel(model, tok)
    train = demo_items()["train"]
    items = [it for it in train if it.behavior == "harmful"][:6] + [it for it in train if it.behavior == "benign"][:2]
    st = MeanSteer(LAYER, behaviors=["harmful"], progress=False).fit(sm, items)
    alpha = 1.0
    b = sm.encode(PROMPTS)
    v = st.vectors(sm, PROMPTS)
    ref = _raw_hook_generate(model, model.model.layers[LAYER], b.inputs, v, tok.pad_token_id, alpha)
    got = st.generate_batch(sm, PROMPTS, alpha=alpha, max_new_tokens=5, output_logits=True)
    with st.attached(model, tok, alpha=alpha), torch.no_grad():
        att = model.generate(**b.inputs, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id,
                             return_dict_in_generate=True, output_logits=True)
    d_engine, n = _diff(got.sequences, got.logits, ref.sequences, ref.logits, b.seq_len)
    d_attach, m = _diff(att.sequences, att.logits, ref.sequences, ref.logits, b.seq_len)
    print(f"SmolLM2 {kind} Mean-S: max |logit diff| engine-hook {d_engine:.3g} ({n} steps), attach-hook "
          f"{d_attach:.3g} ({m} steps), tokens equal {torch.equal(got.sequences, ref.sequences)}")
    assert d_engine <= TOL[kind] and d_attach <= TOL[kind]
