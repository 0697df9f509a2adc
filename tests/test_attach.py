"""``steerer.attached`` / ``steerer.attach``: the user's own calls of the plain HF model are steered.

References: ``steerer.generate_batch`` through the default nnsight backend (token for token and
logits), a raw PyTorch forward hook (beam search), and the unsteered model (after the block).
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from steerlib import ContrastiveItem, SteerableModel
from steerlib.errors import InputError, PositionError
from steerlib.steerers import L2S, MeanSteer, PromptSteer
from steerlib.testing import FAMILIES, TEXT_FAMILIES, build_tiny, tiny_image

from reference import max_logit_diff

PROMPTS = ["Describe the picture.", "What colour is the thing in this image, and why is it there?"]
ALPHA = 8.0
STRONG = 100.0  # the tiny L2S's per-row vectors differ by ~0.013 (norm ~0.12): strong enough that rows tell apart
NEW = 5
LAYER = 1


def _items(is_vlm: bool, n: int = 6) -> list[ContrastiveItem]:
    beh = ["harmful", "benign"]
    return [ContrastiveItem(prompt=f"Question number {i} about the {'cat' if i % 2 else 'weather'} today",
                            positive="I cannot help with that." if i % 2 else "Sure.",
                            negative="Sure, here is how." if i % 2 else "Sure.",
                            behavior=beh[i % 2], images=(tiny_image(10 + i),) if is_vlm else ()) for i in range(n)]


@functools.lru_cache(maxsize=2)
def _setup(family: str):
    t = build_tiny(family)
    sm = SteerableModel(t.model, t.processor)  # the reference: nnsight backend
    items = _items(t.is_vlm)
    steerers = {
        "mean": MeanSteer(LAYER, progress=False).fit(sm, items),
        # input layer 0 below the steered layer: g is computed inside the attached prefill
        "l2s": L2S(LAYER, input_layer=0, hidden=8, epochs=3, lr=1e-2, progress=False).fit(sm, items),
    }
    return t, sm, steerers


def _rows(t, n: int):
    prompts = PROMPTS[:n]
    images = [[tiny_image(1 + i)] for i in range(n)] if t.is_vlm else None
    items = [ContrastiveItem(prompt=p, images=tuple(images[i]) if images else ()) for i, p in enumerate(prompts)]
    return prompts, images, items


def _hooks(model: torch.nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


def _gen(model, inputs, tok, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                              return_dict_in_generate=True, output_logits=True, **kw)


@pytest.mark.parametrize("n_rows", [1, 2])
@pytest.mark.parametrize("method", ["mean", "l2s"])
@pytest.mark.parametrize("family", FAMILIES)
def test_attached_generate_equals_steerer_generate(family, method, n_rows):
    t, sm, steerers = _setup(family)
    st = steerers[method]
    _, images, items = _rows(t, n_rows)
    ref = st.generate_batch(sm, items, alpha=ALPHA, max_new_tokens=NEW, output_logits=True)
    b = sm.encode([it.prompt for it in items], images)
    if n_rows == 2:
        assert bool((b.attention_mask == 0).any()), "the two-row batch must be left-padded"
    plain = _gen(t.model, b.inputs, t.tokenizer)
    before = _hooks(t.model)
    with st.attached(t.model, t.processor, alpha=ALPHA):
        out = _gen(t.model, b.inputs, t.tokenizer)
    assert _hooks(t.model) == before
    assert torch.equal(out.sequences.cpu(), ref.sequences)
    assert max_logit_diff(list(out.logits), ref.logits) < 1e-5
    assert max_logit_diff(list(plain.logits), ref.logits) > 1e-3  # steering did something


@pytest.mark.parametrize("family", ["llama", "llava"])
@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "last_prompt", "image", "text"])
def test_every_position_rule(family, positions):
    t, sm, steerers = _setup(family)
    if positions == "image" and not t.is_vlm:
        pytest.skip("text model: no image tokens")
    _, images, items = _rows(t, 2)
    st = steerers["mean"]
    ref = st.generate_batch(sm, items, alpha=ALPHA, positions=positions, max_new_tokens=NEW, output_logits=True)
    b = sm.encode([it.prompt for it in items], images)
    with st.attached(t.model, t.processor, alpha=ALPHA, positions=positions):
        out = _gen(t.model, b.inputs, t.tokenizer)
    assert torch.equal(out.sequences.cpu(), ref.sequences)
    assert max_logit_diff(list(out.logits), ref.logits) < 1e-5


@pytest.mark.parametrize(("steer_layer", "source_layer", "position"),
                         [(1, 2, "last_prompt"), (1, 1, "last_prompt_no_gen"), (0, 0, "last_prompt")])
def test_l2s_variants_per_row(steer_layer, source_layer, position):
    """g above the steered layer (one extra prefill), g before the generation prompt, same layer."""
    t, sm, _ = _setup("llama")
    items = _items(False, 8)
    st = L2S(steer_layer, input_layer=source_layer, input_position=position, hidden=8, epochs=3, lr=1e-2,
             progress=False).fit(sm, items)
    prompts = [items[0].prompt, items[3].prompt + " and more words"]
    v = st.vectors(sm, prompts)
    assert float((v[0] - v[1]).abs().max()) > 1e-4  # really per-row
    ref = st.generate_batch(sm, prompts, alpha=STRONG, max_new_tokens=NEW, output_logits=True)
    b = sm.encode(prompts)
    with st.attached(t.model, t.tokenizer, alpha=STRONG):
        out = _gen(t.model, b.inputs, t.tokenizer)
    assert torch.equal(out.sequences.cpu(), ref.sequences)
    assert max_logit_diff(list(out.logits), ref.logits) < 1e-5


def test_last_prompt_no_gen_refused_without_generation_prompt():
    t, sm, _ = _setup("llama")
    st = L2S(1, input_position="last_prompt_no_gen", hidden=4, epochs=2, progress=False).fit(sm, _items(False))
    ids = t.tokenizer(["plain text, no chat template"], return_tensors="pt")
    before = _hooks(t.model)
    with pytest.raises(PositionError, match="generation prompt"):
        with st.attached(t.model, t.tokenizer):
            t.model.generate(**ids, max_new_tokens=2, pad_token_id=t.tokenizer.pad_token_id)
    assert _hooks(t.model) == before


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_attached_forward_equals_engine_forward(family):
    t, sm, steerers = _setup(family)
    _, images, items = _rows(t, 2)
    b = sm.encode([it.prompt for it in items], images)
    for st in steerers.values():
        iv = st.intervention(sm, items, b, alpha=ALPHA)
        ref = sm.forward(b, iv)
        inputs = sm._model_inputs(b)  # what the engine's forward passes (position ids for text models)
        with st.attached(t.model, t.processor, alpha=ALPHA), torch.no_grad():
            logits = t.model(**inputs).logits
        assert torch.allclose(logits, ref, atol=1e-5, rtol=0), float((logits - ref).abs().max())
        with torch.no_grad():
            assert float((t.model(**inputs).logits - ref).abs().max()) > 1e-3


@pytest.mark.parametrize("family", TEXT_FAMILIES)
@pytest.mark.parametrize("method", ["mean", "l2s"])
def test_pipeline_equals_steerer_generate(family, method):
    from transformers import pipeline

    t, sm, steerers = _setup(family)
    st = steerers[method]
    ref = st.generate(sm, PROMPTS, alpha=ALPHA, max_new_tokens=NEW, progress=False)
    b = sm.encode(PROMPTS)
    tok = t.tokenizer
    tok.padding_side = "left"
    bos = tok.bos_token
    add_special = not (bos and all(x.startswith(bos) for x in b.texts))
    pipe = pipeline("text-generation", model=t.model, tokenizer=tok)
    kw = dict(max_new_tokens=NEW, do_sample=False, return_full_text=False, add_special_tokens=add_special,
              pad_token_id=tok.pad_token_id)
    with st.attached(t.model, tok, alpha=ALPHA):
        one = [pipe(x, **kw)[0]["generated_text"] for x in b.texts]
        two = [r[0]["generated_text"] for r in pipe(b.texts, batch_size=2, **kw)]  # a left-padded batch
    assert one == ref
    assert two == ref
    plain = [pipe(x, **kw)[0]["generated_text"] for x in b.texts]
    assert plain != ref


def test_right_padding_refused_and_hooks_removed():
    t, sm, steerers = _setup("llama")
    tok = t.tokenizer
    tok.padding_side = "right"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    tok.padding_side = "left"
    assert bool((enc["attention_mask"][:, -1] == 0).any())
    before = _hooks(t.model)
    with pytest.raises(InputError, match="right-padded"):
        with steerers["mean"].attached(t.model, tok, alpha=ALPHA):
            t.model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    assert _hooks(t.model) == before


def test_text_streamer_prints_the_steered_text(capsys):
    from transformers import TextStreamer

    t, sm, steerers = _setup("llama")
    for st in steerers.values():
        ref = st.generate(sm, PROMPTS[:1], alpha=ALPHA, max_new_tokens=NEW, progress=False)[0]
        b = sm.encode(PROMPTS[:1])
        capsys.readouterr()
        with st.attached(t.model, t.tokenizer, alpha=ALPHA), torch.no_grad():
            t.model.generate(**b.inputs, max_new_tokens=NEW, do_sample=False, pad_token_id=t.tokenizer.pad_token_id,
                             streamer=TextStreamer(t.tokenizer, skip_prompt=True, skip_special_tokens=True))
        assert capsys.readouterr().out.strip() == ref.strip()


@pytest.mark.parametrize("method", ["mean", "l2s"])
def test_beam_search_equals_a_raw_hook(method):
    """Beams are expanded before the prefill; each keeps its own prompt's vector through reordering."""
    t, sm, steerers = _setup("llama")
    st = steerers[method]
    b = sm.encode(PROMPTS)
    v = st.vectors(sm, PROMPTS)  # [2, d]: per row (L2S: g of each prompt)
    if method == "l2s":
        assert float((v[0] - v[1]).abs().max()) > 1e-4
    beams = 2
    alpha = STRONG if method == "l2s" else ALPHA
    v = v.repeat_interleave(beams, 0)  # generate's row order: prompt 0's beams, then prompt 1's
    real = b.attention_mask.repeat_interleave(beams, 0)
    layer = sm.adapter.layers(t.model)[LAYER]

    def hook(_m, _i, out):
        h = out[0] if isinstance(out, tuple) else out
        m = real[..., None].to(h.dtype) if h.shape[1] == b.seq_len else torch.ones_like(h[..., :1])
        h = h + alpha * m * v[:, None, :].to(h.dtype)
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = layer.register_forward_hook(hook)
    try:
        ref = _gen(t.model, b.inputs, t.tokenizer, num_beams=beams, num_return_sequences=beams)
    finally:
        handle.remove()
    plain = _gen(t.model, b.inputs, t.tokenizer, num_beams=beams, num_return_sequences=beams)
    with st.attached(t.model, t.tokenizer, alpha=alpha):
        out = _gen(t.model, b.inputs, t.tokenizer, num_beams=beams, num_return_sequences=beams)
    assert torch.equal(out.sequences, ref.sequences)
    assert max_logit_diff(list(out.logits), list(ref.logits)) < 1e-5
    assert max_logit_diff(list(plain.logits), list(ref.logits)) > 1e-3


def test_model_unchanged_and_hooks_removed_on_error():
    t, sm, steerers = _setup("llava")
    _, images, _ = _rows(t, 2)
    b = sm.encode(PROMPTS, images)
    state = {k: v.clone() for k, v in t.model.state_dict().items()}
    gen_cfg = t.model.generation_config.to_dict()
    hooks = _hooks(t.model)
    plain = _gen(t.model, b.inputs, t.tokenizer)
    st = steerers["l2s"]
    with pytest.raises(RuntimeError, match="boom"):
        with st.attached(t.model, t.processor, alpha=ALPHA):
            _gen(t.model, b.inputs, t.tokenizer)
            raise RuntimeError("boom")
    assert _hooks(t.model) == hooks
    # an error raised inside generate (a decode step with rows dropped) also leaves no hook behind
    with pytest.raises(Exception):
        with st.attached(t.model, t.processor, alpha=ALPHA):
            with torch.no_grad():
                out = t.model(**b.inputs, use_cache=True)
                t.model(input_ids=b.input_ids[:1, -1:], attention_mask=b.attention_mask[:1],
                        cache=out.past_key_values)
    assert _hooks(t.model) == hooks
    after = _gen(t.model, b.inputs, t.tokenizer)
    assert torch.equal(after.sequences, plain.sequences)
    assert max_logit_diff(list(after.logits), list(plain.logits)) == 0.0
    assert all(torch.equal(v, state[k]) for k, v in t.model.state_dict().items())
    assert t.model.generation_config.to_dict() == gen_cfg


def test_handle_api_alpha_toggle_and_refusals():
    t, sm, steerers = _setup("llama")
    st = steerers["l2s"]
    b = sm.encode(PROMPTS)
    items = [ContrastiveItem(prompt=p) for p in PROMPTS]
    plain = _gen(t.model, b.inputs, t.tokenizer).sequences
    # references first: inside the block every call of the model is steered, steerlib's own too
    ref8, ref2 = (st.generate_batch(sm, items, alpha=a, max_new_tokens=NEW).sequences for a in (ALPHA, 2.0))
    h = st.attach(t.model, t.tokenizer, alpha=ALPHA)
    try:
        assert h.active
        assert torch.equal(_gen(t.model, b.inputs, t.tokenizer).sequences, ref8)
        with pytest.raises(InputError, match="already attached"):
            steerers["mean"].attach(t.model, t.tokenizer)
        h.alpha = 2.0
        assert torch.equal(_gen(t.model, b.inputs, t.tokenizer).sequences, ref2)
        h.enabled = False
        assert torch.equal(_gen(t.model, b.inputs, t.tokenizer).sequences, plain)
    finally:
        h.remove()
    h.remove()  # idempotent
    assert not h.active
    assert torch.equal(_gen(t.model, b.inputs, t.tokenizer).sequences, plain)
    with pytest.raises(InputError, match="edits the prompt"):
        PromptSteer(LAYER).fit(sm, []).attach(t.model, t.tokenizer)
    with pytest.raises(InputError, match="tokenizer"):
        t.model.config._name_or_path = ""
        st.attach(t.model)


def test_other_methods_through_the_protocol():
    """A sum of steerers and a conditional (gated) steerer decide from the attached prompt pass, as in
    steerer.generate (the conditional one runs a read of its own inside the pass)."""
    from steerlib.steerers import ConditionalSteer

    t, sm, steerers = _setup("llama")
    _, _, items = _rows(t, 2)
    b = sm.encode(PROMPTS)
    combined = steerers["mean"] + 0.5 * steerers["l2s"]
    gated = ConditionalSteer(LAYER, progress=False).fit(sm, _items(False, 8))
    assert len(set(gated.decisions(sm, PROMPTS).tolist())) == 2  # one row steered, the other not
    for st in (combined, gated):
        ref = st.generate_batch(sm, items, alpha=ALPHA, max_new_tokens=NEW, output_logits=True)
        with st.attached(t.model, t.tokenizer, alpha=ALPHA):
            out = _gen(t.model, b.inputs, t.tokenizer)
        assert torch.equal(out.sequences.cpu(), ref.sequences), st.method
        assert max_logit_diff(list(out.logits), ref.logits) < 1e-5
