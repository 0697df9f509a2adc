"""Engine correctness on every family: steering equals a raw-hook reference, batch invariance,
reads equal HF hidden states, and position masks do what they say."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from reference import hidden_states, hook_generate, max_logit_diff
from steerlib import Intervention, SteerableModel
from steerlib.testing import FAMILIES, VLM_FAMILIES, build_tiny, tiny_image

PROMPTS = ["Describe the picture.", "What colour is the thing in this image, and why is it there?"]
LAYER = 1
ALPHA = 1.5
N_NEW = 4


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request):
    t = build_tiny(request.param)
    sm = SteerableModel(t.model, t.processor)
    images = [[tiny_image(1)], [tiny_image(2)]] if t.is_vlm else None
    return t, sm, images


def _pad(sm: SteerableModel) -> int:
    tok = sm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _vectors(sm: SteerableModel, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(n, sm.hidden_size, generator=g)


def _layer_module(t, sm):
    return sm.adapter.layers(t.model)[LAYER]


@pytest.mark.parametrize("n_rows", [1, 2])
def test_steered_logits_equal_hook_reference(fam, n_rows):
    t, sm, images = fam
    b = sm.encode(PROMPTS[:n_rows], images[:n_rows] if images else None)
    V = _vectors(sm, n_rows)
    got = sm.generate(b, Intervention.build(LAYER, V, alpha=ALPHA), max_new_tokens=N_NEW, output_logits=True)
    ref = hook_generate(t.model, _layer_module(t, sm), b.inputs, V, ALPHA, b.attention_mask.bool(), True, N_NEW, _pad(sm))
    assert torch.equal(got.sequences, ref.sequences)
    diff = max_logit_diff(got.logits, list(ref.logits))
    assert diff <= 1e-5, diff
    plain = sm.generate(b, None, max_new_tokens=N_NEW, output_logits=True)
    assert float((plain.logits[0] - got.logits[0]).abs().max()) > 1e-3  # steering did something


def test_batch_invariance(fam):
    t, sm, images = fam
    b = sm.encode(PROMPTS, images)
    V = _vectors(sm, 2, seed=1)
    both = sm.generate(b, Intervention.build(LAYER, V, alpha=ALPHA), max_new_tokens=N_NEW, output_logits=True)
    for i in range(2):
        bi = sm.encode(PROMPTS[i:i + 1], images[i:i + 1] if images else None)
        alone = sm.generate(bi, Intervention.build(LAYER, V[i:i + 1], alpha=ALPHA), max_new_tokens=N_NEW,
                            output_logits=True)
        assert torch.equal(alone.new_tokens[0], both.new_tokens[i])
        diff = max_logit_diff([x[0:1] for x in alone.logits], [x[i:i + 1] for x in both.logits])
        assert diff <= 1e-4, (i, diff)


def test_read_last_token_equals_hidden_states(fam):
    t, sm, images = fam
    b = sm.encode(PROMPTS, images)
    assert b.attention_mask[0, 0] == 0 or b.attention_mask[1, 0] == 0  # really left-padded
    layers = list(range(sm.num_layers - 1))  # HF's last hidden state has the final norm applied
    got = sm.read(b, layers, reduce="last_prompt")
    hs = hidden_states(t.model, b.inputs, sm.adapter.pass_position_ids)
    for layer in layers:
        ref = hs[layer + 1][:, -1].float()
        assert torch.allclose(got[layer], ref, atol=1e-5), (layer, (got[layer] - ref).abs().max())
    full = sm.read(b, [0], reduce="per_token")[0]
    real = b.attention_mask.bool()
    assert torch.allclose(full[real], hs[1][real].float(), atol=1e-5)


def _positions_case(sm, b, name):
    S = b.seq_len
    am = b.attention_mask.bool()
    idx = torch.arange(S)[None, :]
    if name == "prompt":
        return am, False
    if name == "generated":
        return None, True
    if name == "last_prompt":
        return (idx == S - 1).expand_as(am), False
    ids = b.input_ids
    img = torch.isin(ids, torch.tensor(sm.image_token_ids)) if sm.image_token_ids else torch.zeros_like(am)
    if name == "image":
        return am & img, False
    return am & ~img, True  # text


@pytest.mark.parametrize("name", ["prompt", "generated", "last_prompt", "image", "text"])
def test_positions_match_hook_reference(fam, name):
    t, sm, images = fam
    if name == "image" and not t.is_vlm:
        pytest.skip("text-only family")
    b = sm.encode(PROMPTS, images)
    V = _vectors(sm, 2, seed=2)
    mask, decode = _positions_case(sm, b, name)
    got = sm.generate(b, Intervention.build(LAYER, V, alpha=ALPHA, positions=name), max_new_tokens=N_NEW,
                      output_logits=True)
    ref = hook_generate(t.model, _layer_module(t, sm), b.inputs, V, ALPHA, mask, decode, N_NEW, _pad(sm))
    assert max_logit_diff(got.logits, list(ref.logits)) <= 1e-5
    plain = sm.generate(b, None, max_new_tokens=N_NEW, output_logits=True)
    if name == "generated":  # the prompt pass is untouched
        assert torch.equal(got.logits[0], plain.logits[0])
    if name == "prompt":  # decode steps are not steered: a prefill-only hook reproduces every step
        assert max_logit_diff(got.logits[1:], list(ref.logits[1:])) <= 1e-5


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_image_mask_matches_processor_image_tokens(family):
    t = build_tiny(family)
    sm = SteerableModel(t.model, t.processor)
    b = sm.encode(PROMPTS, [[tiny_image(1)], [tiny_image(2)]])
    tok = t.tokenizer
    want_id = getattr(t.model.config, "image_token_id", None)
    if want_id is None:
        want_id = getattr(t.model.config, "image_token_index", None)
    if want_id is None:
        want_id = tok.image_token_id
    assert torch.equal(b.image_mask, b.input_ids == want_id)
    assert int(b.image_mask.sum()) > 0


@pytest.mark.parametrize("close_turn", [False, True])
def test_completion_span_is_the_forced_completion(fam, close_turn):
    t, sm, images = fam
    comps = ["Yes, the image", "I cannot help with that."]
    b = sm.encode(PROMPTS, images, completions=comps, close_turn=close_turn)
    m = b.completion_mask()
    for i, c in enumerate(comps):
        assert t.tokenizer.decode(b.input_ids[i][m[i]]).strip() == c
    plain = sm.encode(PROMPTS, images)
    # the prompt part is the same text as the plain prompt: its last token is the generation prompt's end
    for i in range(2):
        assert b.input_ids[i, b.last_prompt_index[i]] == plain.input_ids[i, -1]


def test_reads_after_a_completion_equal_the_plain_prompt_by_causality(fam):
    t, sm, images = fam
    if sm.adapter.prefix_lm:
        pytest.skip("prefix-LM: prompt tokens see the whole prefix")
    forced = sm.encode(PROMPTS, images, completions=["Sure, here it is.", "No."])
    plain = sm.encode(PROMPTS, images)
    a = sm.read(forced, [0, 1], reduce="last_prompt")
    b = sm.read(plain, [0, 1], reduce="last_prompt")
    for layer in (0, 1):
        assert torch.allclose(a[layer], b[layer], atol=1e-4)
