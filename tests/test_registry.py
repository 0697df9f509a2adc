"""Adapter registry: lookup, clear errors, user registration end to end, the fallback finder."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from reference import hook_generate, max_logit_diff
from steerlib import Adapter, AdapterRegistry, Intervention, SteerableModel
from steerlib.adapters import BUILTIN_ADAPTERS, find_decoder_adapter
from steerlib.adapters import registry as registry_module
from steerlib.errors import AdapterValidationError, LayerIndexError, UnknownArchitectureError
from steerlib.testing import FAMILIES, build_tiny


def test_every_family_has_an_adapter():
    reg = AdapterRegistry(BUILTIN_ADAPTERS)
    assert set(FAMILIES) <= set(reg.families())
    for fam in FAMILIES:
        t = build_tiny(fam)
        a = reg.for_model(t.model, fallback=False)
        assert a.family == fam
        assert a.num_layers(t.model) == t.model.config.get_text_config().num_hidden_layers
        assert a.hidden_size(t.model) == 64


class _NoDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "weird_arch"})()
        self.vision_tower = nn.ModuleList([nn.Linear(2, 2)])


def test_unknown_architecture_error_lists_families_and_howto():
    with pytest.raises(UnknownArchitectureError) as e:
        AdapterRegistry(BUILTIN_ADAPTERS).for_model(_NoDecoder())
    msg = str(e.value)
    assert "weird_arch" in msg and "llava" in msg and "qwen2_vl" in msg and "register_adapter" in msg


def _neox():
    t = build_tiny("llama")
    cfg = GPTNeoXConfig(vocab_size=len(t.tokenizer), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=256, pad_token_id=t.tokenizer.pad_token_id,
                        eos_token_id=t.tokenizer.eos_token_id, bos_token_id=t.tokenizer.bos_token_id)
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(cfg).eval(), t.tokenizer


def _check_steering(sm, model, layer_module):
    b = sm.encode(["hello there", "a longer prompt about the weather today"])
    V = torch.randn(2, sm.hidden_size)
    got = sm.generate(b, Intervention.build(1, V, alpha=2.0), max_new_tokens=3, output_logits=True)
    ref = hook_generate(model, layer_module, b.inputs, V, 2.0, b.attention_mask.bool(), True, 3, sm.tokenizer.pad_token_id)
    assert max_logit_diff(got.logits, list(ref.logits)) <= 1e-5


def test_user_registered_adapter_end_to_end(monkeypatch):
    model, tok = _neox()
    fresh = AdapterRegistry(BUILTIN_ADAPTERS)
    monkeypatch.setattr(registry_module, "DEFAULT_REGISTRY", fresh)
    monkeypatch.setattr("steerlib.engine.DEFAULT_REGISTRY", fresh)
    from steerlib import register_adapter

    register_adapter(Adapter(family="gpt_neox", model_types=("gpt_neox",), layers_path="gpt_neox.layers"))
    sm = SteerableModel(model, tok)
    assert sm.adapter.family == "gpt_neox"
    _check_steering(sm, model, model.gpt_neox.layers[1])
    with pytest.raises(ValueError, match="overwrite=True"):
        register_adapter(Adapter(family="other", model_types=("gpt_neox",), layers_path="x"))


def test_fallback_finds_the_decoder_and_warns():
    model, tok = _neox()
    with pytest.warns(UserWarning, match="gpt_neox.layers"):
        sm = SteerableModel(model, tok)
    assert sm.adapter.layers_path == "gpt_neox.layers"
    _check_steering(sm, model, model.gpt_neox.layers[1])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "internvl", "gemma3"])
def test_fallback_never_picks_the_vision_tower(family):
    t = build_tiny(family)
    found = find_decoder_adapter(t.model)
    want = next(a for a in BUILTIN_ADAPTERS if a.family == family).layers_path
    assert found is not None and found.layers_path == want


def test_fallback_reports_mllama_cross_attention_layers():
    t = build_tiny("mllama")
    with pytest.warns(UserWarning, match="CrossAttention"):
        found = find_decoder_adapter(t.model)
    assert found is not None and "CrossAttention" in found.notes


def test_wrong_layers_path_is_a_clear_error():
    t = build_tiny("llama")
    with pytest.raises(AdapterValidationError, match="layers_path"):
        SteerableModel(t.model, t.processor, adapter=Adapter(family="x", model_types=("x",), layers_path="model.nope"))
    with pytest.raises(AdapterValidationError, match="hidden size|layers"):
        SteerableModel(t.model, t.processor, adapter=Adapter(family="x", model_types=("x",), layers_path="model.layers.0.mlp"))


def test_layer_out_of_range_and_non_integer():
    t = build_tiny("llama")
    sm = SteerableModel(t.model, t.processor)
    b = sm.encode(["hi"])
    v = torch.zeros(sm.hidden_size)
    with pytest.raises(LayerIndexError, match="out of range.*0..2"):
        sm.generate(b, Intervention.build(3, v), max_new_tokens=1)
    with pytest.raises(LayerIndexError):
        sm.generate(b, Intervention.build(-1, v), max_new_tokens=1)
    with pytest.raises(LayerIndexError, match="not an integer"):
        sm.read(b, [1.5])  # type: ignore[list-item]
