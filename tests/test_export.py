"""GGUF export/import of static steerers in llama.cpp's control-vector layout: file contents read
back with the gguf package, steered generation identical after a round trip, and the refusals."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from steerlib import ContrastiveItem, Intervention, SteerableModel  # noqa: E402
from steerlib.errors import (  # noqa: E402
    CompatibilityError,
    DataError,
    LayerIndexError,
    PersistenceError,
    SteerlibError,
)
from steerlib.export import StaticVectors, export_gguf, import_gguf, layer_from_tensor_name, tensor_name  # noqa: E402
from steerlib.steerers import L2S, MeanSteer, MeanSteerBA, NormRandom, NoSteer, P2S, PromptSteer, Steerer  # noqa: E402
from steerlib.testing import build_tiny  # noqa: E402

LAYER = 1
PROMPTS = ["Tell me about cats", "How is the weather today?", "Question number 3"]


@pytest.fixture(scope="module")
def llama():
    t = build_tiny("llama")
    return t, SteerableModel(t.model, t.processor)


def _items(n=6):
    beh = ["harmful", "benign"]
    return [ContrastiveItem(prompt=f"Question number {i} about the {'cat' if i % 2 else 'weather'} today",
                            positive="I cannot help with that." if i % 2 else "Sure.",
                            negative="Sure, here is how." if i % 2 else "Sure.",
                            behavior=beh[i % 2]) for i in range(n)]


@pytest.fixture(scope="module")
def mean(llama):
    _, sm = llama
    return MeanSteer(LAYER, alpha=4.0, progress=False).fit(sm, _items())


def _fields(reader):
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _tokens(steerer, sm, **kw):
    return steerer.generate_batch(sm, PROMPTS, max_new_tokens=8, **kw).sequences


def _unsteered(sm):
    return sm.generate(sm.encode(PROMPTS), None, max_new_tokens=8).sequences


# ------------------------------------------------------------------ file layout ------
def test_export_mean_steer_layout(tmp_path, mean):
    path = export_gguf(mean, tmp_path / "mean.gguf", model_hint="llama")
    assert path == tmp_path / "mean.gguf" and path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "mean.gguf"]  # no temp file left behind
    r = gguf.GGUFReader(path)
    meta = _fields(r)
    assert meta["general.architecture"] == "controlvector"
    assert meta["controlvector.model_hint"] == "llama"
    assert meta["controlvector.layer_count"] == 1
    assert meta["steerlib.method"] == "mean"
    assert meta["steerlib.alpha"] == pytest.approx(4.0)
    assert meta["steerlib.positions"] == "all"
    assert [t.name for t in r.tensors] == [f"direction.{LAYER}"]
    (t,) = r.tensors
    assert t.tensor_type == gguf.GGMLQuantizationType.F32
    assert [int(x) for x in t.shape] == [64] and t.data.dtype == np.float32 and t.data.shape == (64,)
    # the default alpha (the steerer's own) is baked into the direction
    np.testing.assert_array_equal(t.data, (mean.vector_ * 4.0).numpy())


def test_export_multi_layer_dict(tmp_path):
    g = torch.Generator().manual_seed(0)
    vecs = {2: torch.randn(64, generator=g), 1: torch.randn(64, generator=g).numpy(), 5: torch.randn(64, generator=g)}
    path = export_gguf(vecs, tmp_path / "multi.gguf", model_hint="some/model", alpha=0.5)
    r = gguf.GGUFReader(path)
    meta = _fields(r)
    assert meta["controlvector.layer_count"] == 3 and meta["controlvector.model_hint"] == "some/model"
    assert meta["steerlib.method"] == "dict"
    assert [t.name for t in r.tensors] == ["direction.1", "direction.2", "direction.5"]
    for t in r.tensors:
        layer = layer_from_tensor_name(t.name)
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and [int(x) for x in t.shape] == [64]
        np.testing.assert_array_equal(t.data, torch.as_tensor(vecs[layer]).float().numpy() * np.float32(0.5))


def test_layer_numbering_is_identity():
    # steerlib layer i (output of block i, HF hidden_states[i+1]) <-> llama.cpp direction.i
    assert tensor_name(7) == "direction.7" and layer_from_tensor_name("direction.7") == 7
    with pytest.raises(PersistenceError, match="direction.<layer>"):
        layer_from_tensor_name("blk.0.attn_q.weight")


# ------------------------------------------------------------------ round trips ------
def test_import_generates_like_the_original(tmp_path, llama, mean):
    _, sm = llama
    path = export_gguf(mean, tmp_path / "mean.gguf", model_hint="llama")
    sv = import_gguf(path, sm)
    assert isinstance(sv, StaticVectors) and sv.layers == [LAYER] and sv.alpha == 1.0 and sv.positions == "all"
    assert sv.model_hint == "llama" and sv.model_info_["hidden_size"] == 64
    assert torch.equal(sv.vectors_[0], mean.vector_ * 4.0)
    ref = _tokens(mean, sm)
    assert not torch.equal(ref, _unsteered(sm)), "the steering must change the output for this test to mean anything"
    assert torch.equal(_tokens(sv, sm), ref)
    # an explicit alpha overrides the steerer's, and alpha is baked: importing with alpha=1 matches
    path2 = export_gguf(mean, tmp_path / "mean2.gguf", model_hint="llama", alpha=2.5)
    assert torch.equal(_tokens(import_gguf(path2, sm), sm), _tokens(mean, sm, alpha=2.5))
    assert torch.allclose(sv.vectors(sm, PROMPTS), mean.vectors(sm, PROMPTS) * 4.0)


def test_import_multi_layer_matches_hand_intervention(tmp_path, llama):
    _, sm = llama
    g = torch.Generator().manual_seed(1)
    vecs = {1: torch.randn(64, generator=g), 2: torch.randn(64, generator=g)}
    sv = import_gguf(export_gguf(vecs, tmp_path / "m.gguf", model_hint="llama"), sm, alpha=3.0)
    assert sv.layers == [1, 2] and sv.vectors_.shape == (2, 64)
    batch = sm.encode(PROMPTS)
    ref = sm.generate(batch, Intervention.build([1, 2], vecs, alpha=3.0), max_new_tokens=8).sequences
    assert not torch.equal(ref, _unsteered(sm))
    assert torch.equal(_tokens(sv, sm), ref)
    with pytest.raises(DataError, match="layer="):
        sv.vectors(sm, PROMPTS)
    assert torch.equal(sv.vectors(sm, PROMPTS, layer=2)[1], vecs[2])


def test_static_vectors_save_load_and_reexport(tmp_path, llama, mean):
    _, sm = llama
    sv = import_gguf(export_gguf(mean, tmp_path / "a.gguf", model_hint="llama"), sm)
    sv.save_pretrained(tmp_path / "folder")
    back = Steerer.from_pretrained(tmp_path / "folder", model=sm)
    assert isinstance(back, StaticVectors) and back.layers == sv.layers and back.model_hint == "llama"
    assert torch.equal(back.vectors_, sv.vectors_)
    assert torch.equal(_tokens(back, sm), _tokens(mean, sm))
    # a StaticVectors exports too, and the file is the same direction
    again = export_gguf(back, tmp_path / "b.gguf", model_hint="llama")
    (t,) = gguf.GGUFReader(again).tensors
    np.testing.assert_array_equal(t.data, sv.vectors_[0].numpy())
    with pytest.raises(DataError, match="MeanSteer"):
        StaticVectors([1]).fit(sm, _items())


def test_mean_steer_ba_exports(tmp_path, llama):
    _, sm = llama
    ba = MeanSteerBA(2, positive="Harmful", negative="Safe", prompt_suffix=" Safe?", progress=False).fit(sm, _items(4))
    (t,) = gguf.GGUFReader(export_gguf(ba, tmp_path / "ba.gguf", model_hint="llama")).tensors
    assert t.name == "direction.2"
    np.testing.assert_array_equal(t.data, ba.vector_.numpy())


# ------------------------------------------------------------------ refusals ---------
def test_refuses_input_dependent_steerers(tmp_path, llama):
    _, sm = llama
    for s in (P2S(LAYER, progress=False).fit(sm, []), NormRandom(LAYER, progress=False).fit(sm, []), L2S(LAYER)):
        with pytest.raises(PersistenceError, match="Only static vectors can be exported") as e:
            export_gguf(s, tmp_path / "x.gguf", model_hint="llama")
        assert isinstance(e.value, SteerlibError) and s.method in str(e.value)
    for s in (NoSteer(), PromptSteer()):
        with pytest.raises(PersistenceError, match="nothing to write"):
            export_gguf(s, tmp_path / "x.gguf", model_hint="llama")
    with pytest.raises(DataError, match="export_gguf takes"):
        export_gguf(torch.zeros(64), tmp_path / "x.gguf", model_hint="llama")
    assert not list(tmp_path.iterdir())


def test_refuses_bad_vectors_and_layer_zero(tmp_path):
    p = tmp_path / "x.gguf"
    with pytest.raises(LayerIndexError, match="layer 0"):
        export_gguf({0: torch.ones(4), 1: torch.ones(4)}, p, model_hint="m")
    with pytest.raises(SteerlibError, match="different lengths"):
        export_gguf({1: torch.ones(4), 2: torch.ones(5)}, p, model_hint="m")
    with pytest.raises(SteerlibError, match="1-D"):
        export_gguf({1: torch.ones(2, 4)}, p, model_hint="m")
    with pytest.raises(SteerlibError, match="NaN"):
        export_gguf({1: torch.tensor([1.0, float("nan")])}, p, model_hint="m")
    with pytest.raises(DataError, match="model_hint"):
        export_gguf({1: torch.ones(4)}, p, model_hint="")
    with pytest.raises(DataError, match="at least one"):
        export_gguf({}, p, model_hint="m")
    assert not list(tmp_path.iterdir())


def test_refuses_overwrite(tmp_path, mean):
    p = export_gguf(mean, tmp_path / "v.gguf", model_hint="llama")
    before = p.read_bytes()
    with pytest.raises(PersistenceError, match="overwrite=True"):
        export_gguf({1: torch.ones(64)}, p, model_hint="llama")
    assert p.read_bytes() == before
    export_gguf({1: torch.ones(64)}, p, model_hint="llama", overwrite=True)
    (t,) = gguf.GGUFReader(p).tensors
    np.testing.assert_array_equal(t.data, np.ones(64, np.float32))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["v.gguf"]


def test_positions_warning(tmp_path, llama):
    _, sm = llama
    ms = MeanSteer(LAYER, positions="prompt", progress=False).fit(sm, _items(4))
    with pytest.warns(UserWarning, match="every token"):
        export_gguf(ms, tmp_path / "p.gguf", model_hint="llama")


def test_import_errors(tmp_path, llama):
    _, sm = llama
    with pytest.raises(CompatibilityError, match="Hidden-size mismatch.*hidden size 64"):
        import_gguf(export_gguf({1: torch.ones(32)}, tmp_path / "narrow.gguf", model_hint="llama"), sm)
    with pytest.raises(CompatibilityError, match=r"steers layers \[7\].*3 decoder layers"):
        import_gguf(export_gguf({7: torch.ones(64)}, tmp_path / "deep.gguf", model_hint="llama"), sm)
    with pytest.warns(UserWarning, match="made for 'qwen2'"):
        import_gguf(export_gguf({1: torch.ones(64)}, tmp_path / "q.gguf", model_hint="qwen2"), sm)
    with pytest.raises(PersistenceError, match="No control-vector file"):
        import_gguf(tmp_path / "missing.gguf", sm)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(PersistenceError, match="not a readable GGUF"):
        import_gguf(tmp_path / "junk.gguf", sm)
    w = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama", use_temp_file=False)
    w.add_tensor("token_embd.weight", np.zeros((4, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(PersistenceError, match="not a control vector"):
        import_gguf(tmp_path / "model.gguf", sm)
