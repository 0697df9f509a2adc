"""Reduced precision and quantized models: steering a bfloat16 model and a model quantized with
torch's dynamic int8 quantization (``torch.ao.quantization.quantize_dynamic`` on the Linear layers)
equals a raw PyTorch forward hook on the same model, within the dtype's tolerance.

The engine casts each vector to the hidden state's dtype and device; a dynamic-int8 model keeps
float32 hidden states (only the Linear weights are int8), so it is steered exactly as in float32.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from reference import max_logit_diff
from steerlib import ContrastiveItem, SteerableModel
from steerlib.steerers import L2S, MeanSteer
from steerlib.testing import build_tiny

PROMPTS = ["Describe the picture.", "What colour is the thing in this image, and why is it there?"]
LAYER, SOURCE, NEW = 1, 0, 5
# bfloat16 keeps 8 bits of mantissa: alpha and each sum round at about 0.4 % (observed: at most 0.0039)
TOL = {"bfloat16": 1e-2, "int8": 1e-5}


def _items(n: int = 6) -> list[ContrastiveItem]:
    beh = ["harmful", "benign"]
    return [ContrastiveItem(prompt=f"Question number {i} about the {'cat' if i % 2 else 'weather'} today",
                            positive="I cannot help with that." if i % 2 else "Sure.",
                            negative="Sure, here is how." if i % 2 else "Sure.", behavior=beh[i % 2]) for i in range(n)]


def _model(family: str, kind: str):
    t = build_tiny(family)
    if kind == "bfloat16":
        return t.model.to(torch.bfloat16), t.tokenizer
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 marks torch.ao.quantization deprecated (torchao replaces it)
        q = quantize_dynamic(t.model, {torch.nn.Linear}, dtype=torch.qint8)
    assert "quantized" in type(q.get_submodule(_first_linear(q))).__module__
    return q, t.tokenizer


def _first_linear(model: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if n.endswith("q_proj") or n.endswith("c_attn"))


def _raw_hook_generate(model, layer_module, inputs, v, pad, alpha):
    """Greedy generate with a raw hook adding ``alpha * v_row`` (in the state's dtype) on real tokens."""
    seq = inputs["input_ids"].shape[1]
    real = inputs["attention_mask"].bool()

    def hook(_m, _i, out):
        h = out[0] if isinstance(out, tuple) else out
        add = (alpha * v.to(h.dtype))[:, None, :]
        h = torch.where(real[..., None], h + add, h) if h.shape[1] == seq else h + add
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = layer_module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=NEW, do_sample=False, pad_token_id=pad,
                                  return_dict_in_generate=True, output_logits=True)
    finally:
        handle.remove()


def _diff(seq_a, logits_a, seq_b, logits_b, prompt_len):
    """Max |logit difference| over the steps whose every earlier token agrees (a bfloat16 rounding may
    flip a near-tied greedy token, after which the two runs continue from different text)."""
    n = 1
    while n < len(logits_a) and torch.equal(seq_a[:, prompt_len:prompt_len + n], seq_b[:, prompt_len:prompt_len + n]):
        n += 1
    return max_logit_diff([x.float().cpu() for x in logits_a[:n]], [x.float().cpu() for x in logits_b[:n]]), n


@pytest.mark.parametrize("alpha", [6.0, 0.7])  # 0.7 is not a bfloat16 number: rounding order matters
@pytest.mark.parametrize("method", ["mean", "l2s"])
@pytest.mark.parametrize(("family", "kind"), [("llama", "bfloat16"), ("gpt2", "bfloat16"), ("llama", "int8"),
                                              ("qwen2", "int8")])
def test_steering_equals_a_raw_hook(family, kind, method, alpha):
    model, tok = _model(family, kind)
    sm = SteerableModel(model, tok)
    items = _items()
    if method == "mean":
        st = MeanSteer(LAYER, progress=False).fit(sm, items)
    else:
        st = L2S(LAYER, input_layer=SOURCE, hidden=8, epochs=3, lr=1e-2, progress=False).fit(sm, items)
    b = sm.encode(PROMPTS)
    if method == "mean":
        v = st.vectors(sm, PROMPTS)
    else:  # g on the source layer's state at the last prompt token, from HF's own hidden states
        am = b.attention_mask.long()
        with torch.no_grad():
            hs = model(**b.inputs, position_ids=(am.cumsum(-1) - 1).masked_fill(am == 0, 1),
                       output_hidden_states=True).hidden_states[SOURCE + 1]
        v = st.predict(hs[:, -1])
    assert v.shape == (2, sm.hidden_size)
    ref = _raw_hook_generate(model, sm.adapter.layers(model)[LAYER], b.inputs, v, tok.pad_token_id, alpha)
    got = st.generate_batch(sm, PROMPTS, alpha=alpha, max_new_tokens=NEW, output_logits=True)
    with st.attached(model, tok, alpha=alpha), torch.no_grad():
        att = model.generate(**b.inputs, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                             return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        plain = model.generate(**b.inputs, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                               return_dict_in_generate=True, output_logits=True)
    prompt_len = b.seq_len
    d_engine, n_engine = _diff(got.sequences, got.logits, ref.sequences.cpu(), ref.logits, prompt_len)
    d_attach, n_attach = _diff(att.sequences.cpu(), att.logits, ref.sequences.cpu(), ref.logits, prompt_len)
    d_plain, _ = _diff(plain.sequences.cpu(), plain.logits, ref.sequences.cpu(), ref.logits, prompt_len)
    print(f"{family} {kind} {method} alpha {alpha}: max |logit diff| engine-hook {d_engine:.3g} ({n_engine} steps), "
          f"attach-hook {d_attach:.3g} ({n_attach} steps), unsteered-hook {d_plain:.3g}, "
          f"tokens equal {torch.equal(got.sequences, ref.sequences.cpu())}")
    assert got.logits[0].dtype == ref.logits[0].dtype
    assert d_engine <= TOL[kind] and d_attach <= TOL[kind]
    assert d_plain > 5 * max(d_engine, d_attach, TOL[kind] / 10)  # the steering is far above the rounding
    if kind == "int8":
        assert torch.equal(got.sequences, ref.sequences.cpu()) and torch.equal(att.sequences, ref.sequences)
