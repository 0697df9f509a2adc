"""The forward-hook backend equals the nnsight backend: same tokens, same logits, same recorded
states, for every family, several layers, every position rule and L2S's in-pass prediction."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from steerlib import Intervention, SteerableModel
from steerlib.errors import InputError
from steerlib.testing import FAMILIES, build_tiny, tiny_image

PROMPTS = ["Describe the picture.", "What colour is the thing in this image, and why is it there?"]


def _pair(family: str):
    t = build_tiny(family)
    images = [[tiny_image(1)], [tiny_image(2)]] if t.is_vlm else None
    return (SteerableModel(t.model, t.processor), SteerableModel(t.model, t.processor, backend="hooks"), images)


def _same(a, b) -> None:
    assert torch.equal(a.sequences, b.sequences)
    assert len(a.logits) == len(b.logits)
    for x, y in zip(a.logits, b.logits, strict=True):
        assert torch.allclose(x, y, atol=1e-6, rtol=0), float((x - y).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_equal_nnsight_on_every_family(family):
    nn_sm, hk_sm, images = _pair(family)
    b = nn_sm.encode(PROMPTS, images)
    g = torch.Generator().manual_seed(0)
    layers = [0, nn_sm.num_layers - 1]
    iv = Intervention.build(layers, {layer: 2.0 * torch.randn(2, nn_sm.hidden_size, generator=g) for layer in layers},
                            alpha=1.5)
    a = nn_sm.generate(b, iv, max_new_tokens=4, output_logits=True)
    c = hk_sm.generate(b, iv, max_new_tokens=4, output_logits=True)
    _same(a, c)
    plain = nn_sm.generate(b, None, max_new_tokens=4, output_logits=True)
    assert float((plain.logits[0] - a.logits[0]).abs().max()) > 1e-3  # steering did something
    assert torch.allclose(nn_sm.forward(b, iv), hk_sm.forward(b, iv), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llama", "llava"])
@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "last_prompt", "image", "text"])
def test_hooks_equal_nnsight_for_every_position_rule(family, positions):
    nn_sm, hk_sm, images = _pair(family)
    if positions == "image" and images is None:
        pytest.skip("text model: no image tokens")
    b = nn_sm.encode(PROMPTS, images)
    v = 3.0 * torch.randn(nn_sm.hidden_size, generator=torch.Generator().manual_seed(1))
    iv = Intervention.build(1, v, alpha=1.0, positions=positions)
    _same(nn_sm.generate(b, iv, max_new_tokens=3, output_logits=True),
          hk_sm.generate(b, iv, max_new_tokens=3, output_logits=True))


@pytest.mark.parametrize(("steer_layer", "source_layer"), [(1, 0), (1, 1), (0, 1)])
def test_hooks_equal_nnsight_for_l2s_prediction_and_collected_states(steer_layer, source_layer):
    nn_sm, hk_sm, _ = _pair("llama")
    b = nn_sm.encode(PROMPTS)
    torch.manual_seed(0)
    g = torch.nn.Sequential(torch.nn.Linear(nn_sm.hidden_size, 8), torch.nn.Tanh(),
                            torch.nn.Linear(8, nn_sm.hidden_size))
    iv = Intervention.build(steer_layer, predictor=lambda h: 5.0 * g(h), source_layer=source_layer, alpha=1.0)
    with torch.no_grad():
        a = nn_sm.generate(b, iv, max_new_tokens=4, output_logits=True, collect=[0, 2])
        c = hk_sm.generate(b, iv, max_new_tokens=4, output_logits=True, collect=[0, 2])
    _same(a, c)
    assert a.states is not None and c.states is not None
    for layer in (0, 2):
        assert len(a.states[layer]) == len(c.states[layer]) == 4
        for x, y in zip(a.states[layer], c.states[layer], strict=True):
            assert torch.allclose(x, y, atol=1e-6, rtol=0)


def test_hooks_are_removed_after_the_call():
    nn_sm, hk_sm, _ = _pair("llama")
    b = hk_sm.encode(PROMPTS)
    iv = Intervention.build(1, torch.ones(hk_sm.hidden_size), alpha=1.0)
    hk_sm.generate(b, iv, max_new_tokens=2)
    assert all(len(m._forward_hooks) == 0 for m in hk_sm.adapter.layers(hk_sm.model))
    with pytest.raises(ValueError, match="bad_generate_kwarg"):  # the call fails inside generate
        hk_sm.generate(b, Intervention.build(1, torch.ones(hk_sm.hidden_size), alpha=1.0), max_new_tokens=2,
                       bad_generate_kwarg=True)
    assert all(len(m._forward_hooks) == 0 for m in hk_sm.adapter.layers(hk_sm.model))


def test_unknown_backend_is_a_clear_error():
    t = build_tiny("llama")
    with pytest.raises(InputError, match="Unknown backend 'jax'; use one of nnsight, hooks"):
        SteerableModel(t.model, t.processor, backend="jax")
