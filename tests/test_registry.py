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
from steerlib.testing import (
    FAMILIES,
    NESTED_IMAGE_FAMILIES,
    TEXT_FAMILIES,
    VLM_FAMILIES,
    build_tiny,
    family_rosters,
)


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


def test_a_new_family_is_one_row(recwarn):
    """docs/adding-a-model.md, section 5: a built-in family is one Adapter row of the table (plus a tiny builder).

    A table with one more row (GPT-NeoX, which steerlib does not ship) serves the new model_type by lookup, not by
    the fallback; the tiny factory's rosters read the row's fields, not its place; and steering through the row
    gives the raw-hook reference's tokens and logits."""
    row = Adapter(family="gpt_neox", model_types=("gpt_neox",), layers_path="gpt_neox.layers")
    table = (*BUILTIN_ADAPTERS, row)
    reg = AdapterRegistry(table)
    assert reg.families() == sorted({a.family for a in BUILTIN_ADAPTERS} | {"gpt_neox"})
    model, tok = _neox()
    assert reg.for_model(model, fallback=False) is row

    # the rosters are read off the table: today's table gives today's lists ...
    assert family_rosters(BUILTIN_ADAPTERS) == (FAMILIES, VLM_FAMILIES, TEXT_FAMILIES, NESTED_IMAGE_FAMILIES)
    # ... a text row joins the text families, a VLM row the VLM (and nested) ones, wherever it sits
    rosters = family_rosters(table)
    assert rosters.families == (*FAMILIES, "gpt_neox") and rosters.text == (*TEXT_FAMILIES, "gpt_neox")
    assert rosters.vlm == VLM_FAMILIES and rosters.nested_images == NESTED_IMAGE_FAMILIES
    vlm_row = Adapter(family="my_vlm", model_types=("my_vlm",), layers_path="model.language_model.layers",
                      is_vlm=True, nested_images=True)
    first = family_rosters((vlm_row, *table))
    assert first.vlm == ("my_vlm", *VLM_FAMILIES) and first.nested_images == ("my_vlm", *NESTED_IMAGE_FAMILIES)
    assert first.text == rosters.text and first.families == first.vlm + first.text

    sm = SteerableModel(model, tok, registry=reg)
    assert sm.adapter is row
    assert not [w for w in recwarn if "No adapter is registered" in str(w.message)]
    b = sm.encode(["hello there", "a longer prompt about the weather today"])
    V = torch.randn(2, sm.hidden_size, generator=torch.Generator().manual_seed(0))
    got = sm.generate(b, Intervention.build(1, V, alpha=2.0), max_new_tokens=4, output_logits=True)
    ref = hook_generate(model, model.gpt_neox.layers[1], b.inputs, V, 2.0, b.attention_mask.bool(), True, 4,
                        sm.tokenizer.pad_token_id)
    assert torch.equal(got.sequences, ref.sequences)
    assert max_logit_diff(got.logits, list(ref.logits)) <= 1e-5
    plain = sm.generate(b, max_new_tokens=4, output_logits=True)
    assert max_logit_diff(plain.logits, got.logits) > 1e-3  # the row really steers


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
