"""The Steerer protocol hooks the ring asks instead of testing types: scikit-learn's parameter
contract (clone / get_params / set_params, validation in fit), extraction sharing, steered rows,
vectors reused across alphas, static vectors for export, and the method registry."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import warnings
from pathlib import Path

import pytest
import torch
from sklearn.base import clone as sk_clone

from steerlib import ContrastiveItem, SteerableModel
from steerlib.errors import DataError, InputError, NotFittedError
from steerlib.steerers import (
    L2S,
    METHODS,
    MeanSteer,
    MeanSteerBA,
    NormRandom,
    NoSteer,
    P2S,
    P2SExtraction,
    PromptSteer,
    StaticVectors,
    Steerer,
    extract_p2s,
    fit_sharing_extraction,
)
from steerlib.steerers import extract as extract_mod
from steerlib.testing import build_tiny

LAYER = 1
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llama():
    t = build_tiny("llama")
    return t, SteerableModel(t.model, t.processor)


def _items(n=8):
    """Harmful items with differing completions, benign ones whose completions are equal (z = 0)."""
    return [ContrastiveItem(prompt=f"Question {i} about the {'cat' if i % 2 else 'weather'} and more words" * (1 + i % 3),
                            positive="I cannot help with that." if i % 2 else "Sure.",
                            negative="Sure, here is how." if i % 2 else "Sure.",
                            behavior="harmful" if i % 2 else "benign", id=f"q{i}") for i in range(n)]


BUILDABLE = sorted(m for m, cls in METHODS.items() if cls.builds_from_params)


# ---------------------------------------------------------------------------- parameters ---
@pytest.mark.parametrize("method", BUILDABLE)
def test_sklearn_clone_gives_an_unfitted_equal_copy(method, llama):
    _, sm = llama
    st = METHODS[method](LAYER, alpha=1.5, progress=False) if "progress" in METHODS[method]._param_names() \
        else METHODS[method](LAYER, alpha=1.5)
    st.fit(sm, _items())
    for c in (sk_clone(st), st.clone()):
        assert type(c) is type(st) and c.get_params() == st.get_params()
        assert not c.is_fitted
    assert st.clone(alpha=0.25).alpha == 0.25 and st.alpha == 1.5
    assert st.clone(layer=0).layer == 0


def test_params_are_declared_once_and_stored_as_given():
    """The shared P2S parameters come from P2SBased's signature alone; nothing is converted in __init__."""
    beh = ("harmful",)
    m = MeanSteer(2, behaviors=beh, reduction="sampled_mean", seed=3, batch_size=5)
    assert m.behaviors is beh
    assert list(MeanSteer(0).get_params()) == ["layer", "behaviors", "alpha", "positions", "reduction",
                                               "continuation_tokens", "seed", "batch_size", "equalize_norms_to",
                                               "progress"]
    l2s_params = set(L2S(0).get_params())
    assert {"reduction", "continuation_tokens", "seed", "batch_size", "equalize_norms_to", "progress"} <= l2s_params
    assert m.extraction == P2SExtraction("sampled_mean", 100, 3, 5)
    assert MeanSteerBA(0).extraction is None and NoSteer().extraction is None


def test_set_params_and_unknown_names():
    m = MeanSteer(0)
    assert m.set_params(alpha=2.0, layer=3) is m and (m.alpha, m.layer) == (2.0, 3)
    with pytest.raises(InputError, match="no hyperparameter 'alpah'"):
        m.set_params(alpah=1.0)
    with pytest.raises(InputError, match="alpah"):
        m.clone(alpah=1.0)


@pytest.mark.parametrize("make, phrase", [
    (lambda: MeanSteer(LAYER, reduction="bogus"), "Unknown P2S reduction 'bogus'"),
    (lambda: MeanSteer(LAYER, batch_size=0), "batch_size must be a positive int"),
    (lambda: MeanSteer(99), "layer"),
    (lambda: L2S(LAYER, init="nope"), "init must be one of"),
    (lambda: L2S(LAYER, scheduler="linear"), "scheduler must be"),
    (lambda: L2S(LAYER, input_position="first"), "input_position must be one of"),
    (lambda: PromptSteer(where="middle"), "where must be 'prefix' or 'suffix'"),
    (lambda: MeanSteerBA(LAYER, equalize_norms_to="harmful"), "drop equalize_norms_to='harmful'"),
])
def test_validation_happens_in_fit_not_init(make, phrase, llama):
    _, sm = llama
    st = make()  # constructing never raises (scikit-learn's contract)
    with pytest.raises(Exception, match=re.escape(phrase) if "'" in phrase else phrase) as ei:
        st.fit(sm, _items())
    assert isinstance(ei.value, (DataError,)) or "layer" in phrase


def test_meansteer_ba_no_longer_drops_equalize_norms_to():
    assert MeanSteerBA(0, equalize_norms_to="harmful").equalize_norms_to == "harmful"


# ---------------------------------------------------------------------------- registry -----
def test_methods_is_a_read_only_view_of_the_registry():
    assert dict(METHODS) == Steerer._registry
    with pytest.raises(TypeError):
        METHODS["x"] = MeanSteer  # type: ignore[index]
    assert {"none", "prompt", "norm_random", "mean", "mean_ba", "p2s", "l2s", "static"} <= set(METHODS)


def test_no_type_test_of_a_steerer_outside_steerers():
    """The ring asks the steerer through the protocol: no isinstance / type(...) is outside steerers/."""
    classes = "L2S|P2S|P2SBased|NoSteer|PromptSteer|MeanSteer|MeanSteerBA|NormRandom|StaticVectors"
    pat = re.compile(rf"isinstance\([^)]*,\s*\(?[^)]*\b({classes})\b|type\([^)]*\)\s+is\b|\.method\s*==\s*['\"]")
    hits = []
    for path in (ROOT / "steerlib").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("steerlib/steerers/"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pat.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


# ---------------------------------------------------------------------------- rows ---------
def test_steered_rows(llama):
    _, sm = llama
    items = _items(6)
    assert NoSteer().fit(sm, []).steered_rows(sm, items) == []
    assert PromptSteer().fit(sm, []).steered_rows(sm, items) == list(range(6))
    assert P2S(LAYER, progress=False).fit(sm, []).steered_rows(sm, items) == [1, 3, 5]
    assert NormRandom(LAYER, progress=False).fit(sm, []).steered_rows(sm, items) == [1, 3, 5]
    assert MeanSteer(LAYER, progress=False).fit(sm, items).steered_rows(sm, items) == list(range(6))
    l2s = L2S(LAYER, hidden=8, epochs=2, progress=False).fit(sm, items)
    assert l2s.steered_rows(sm, items) == list(range(6))  # no gate: every row
    l2s.gate_norm_ = float(l2s.vectors(sm, items).norm(dim=-1).median())
    v = l2s.vectors(sm, items)
    assert l2s.steered_rows(sm, items) == [i for i in range(6) if bool(v[i].any())]
    assert 0 < len(l2s.steered_rows(sm, items)) < 6


@pytest.mark.parametrize("make", [lambda: P2S(LAYER, progress=False), lambda: NormRandom(LAYER, progress=False)])
def test_rows_left_out_equal_the_unsteered_run(make, llama):
    """A row steered_rows leaves out runs exactly as unsteered (its vector is exactly zero)."""
    _, sm = llama
    items = _items(6)
    st = make().fit(sm, [])
    rows = st.steered_rows(sm, items)
    full = st.generate_batch(sm, items, alpha=3.0, max_new_tokens=5).new_tokens
    base = NoSteer().fit(sm, []).generate_batch(sm, items, max_new_tokens=5).new_tokens
    left = [i for i in range(6) if i not in rows]
    assert left and torch.equal(full[left], base[left])
    assert not torch.equal(full[rows], base[rows])


# ---------------------------------------------------------------------------- vectors ------
@pytest.mark.parametrize("make", [lambda: P2S(LAYER, progress=False), lambda: NormRandom(LAYER, progress=False),
                                  lambda: MeanSteer(LAYER, progress=False)])
def test_vectors_reused_across_alphas_equal_a_fresh_generation(make, llama):
    _, sm = llama
    items = _items(4)
    st = make().fit(sm, items)
    assert st.vectors_depend_on_alpha is False
    v = st.vectors(sm, items)
    for a in (0.5, 2.0):
        fresh = st.generate_batch(sm, items, alpha=a, max_new_tokens=4).sequences
        reused = st.generate_batch(sm, items, alpha=a, max_new_tokens=4, vectors=v).sequences
        assert torch.equal(fresh, reused)


def test_l2s_refuses_precomputed_vectors(llama):
    _, sm = llama
    l2s = L2S(LAYER, hidden=8, epochs=2, progress=False).fit(sm, _items())
    assert l2s.vectors_depend_on_alpha is True
    with pytest.raises(DataError, match="inside the generation pass"):
        l2s.generate_batch(sm, _items(2), vectors=torch.zeros(2, sm.hidden_size))


def test_static_vectors_for_export(llama):
    _, sm = llama
    items = _items()
    mean = MeanSteer(LAYER, progress=False).fit(sm, items)
    sv = mean.static_vectors()
    assert list(sv) == [LAYER] and torch.equal(sv[LAYER], mean.vector_)
    st = StaticVectors.from_vectors(sm, {0: torch.ones(sm.hidden_size), 1: torch.zeros(sm.hidden_size)})
    assert {k: v.tolist() for k, v in st.static_vectors().items()} == {k: v.tolist() for k, v in st.as_dict().items()}
    assert L2S(LAYER, hidden=8, epochs=1, progress=False).fit(sm, items).static_vectors() is None
    assert P2S(LAYER).fit(sm, []).static_vectors() is None and NoSteer().fit(sm, []).static_vectors() is None
    with pytest.raises(NotFittedError):
        MeanSteer(LAYER).static_vectors()
    assert not NoSteer.adds_vectors and not PromptSteer.adds_vectors and MeanSteer.adds_vectors
    assert NoSteer.is_unsteered and not PromptSteer.is_unsteered and not StaticVectors.builds_from_params


# ---------------------------------------------------------------------------- extraction ---
def test_fit_sharing_extraction_equals_separate_fits_with_one_extraction(llama, monkeypatch):
    _, sm = llama
    items = _items(8)
    common = dict(progress=False, batch_size=4)
    shared = {"mean": MeanSteer(LAYER, **common), "l2s": L2S(LAYER, input_layer=0, hidden=8, epochs=3, **common),
              "mean0": MeanSteer(0, **common), "ba": MeanSteerBA(LAYER, **common)}
    alone = {k: s.clone() for k, s in shared.items()}
    for s in alone.values():
        s.fit(sm, items)
    calls = []
    real = extract_mod.extract_p2s_layers

    def counting(*a, **k):
        calls.append(k.get("reduction"))
        return real(*a, **k)

    monkeypatch.setattr(extract_mod, "extract_p2s_layers", counting)
    fit_sharing_extraction(sm, items, shared, progress=False)
    # mean, l2s and mean0 share one extraction (layers 0 and 1 from the same passes); BA extracts its own pairs
    assert len(calls) == 2
    for k in ("mean", "mean0", "ba"):
        assert torch.allclose(shared[k].vector_, alone[k].vector_, atol=1e-5), k
    for name in ("encoder_weight_", "decoder_weight_"):
        assert torch.allclose(getattr(shared["l2s"], name), getattr(alone["l2s"], name), atol=1e-4)
    assert all(s.is_fitted for s in shared.values())


def test_different_settings_do_not_share(llama, monkeypatch):
    _, sm = llama
    items = _items(4)
    calls = []
    real = extract_mod.extract_p2s_layers
    monkeypatch.setattr(extract_mod, "extract_p2s_layers", lambda *a, **k: calls.append(1) or real(*a, **k))
    group = {"a": MeanSteer(LAYER, progress=False), "b": MeanSteer(LAYER, batch_size=2, progress=False)}
    fit_sharing_extraction(sm, items, group, progress=False)
    assert len(calls) == 2


# ---------------------------------------------------------------------------- vocabulary ---
def test_p2s_reduction_last_is_a_deprecated_spelling_of_end_of_turn(llama):
    _, sm = llama
    items = _items(4)
    new = extract_p2s(sm, items, LAYER, reduction="end_of_turn", progress=False).z
    with pytest.warns(DeprecationWarning, match="now called 'end_of_turn'"):
        old = extract_p2s(sm, items, LAYER, reduction="last", progress=False).z
    assert torch.equal(new, old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert MeanSteer(LAYER, reduction="last").extraction.reduction == "end_of_turn"


def test_moved_modules_still_import_with_a_warning():
    import importlib

    import steerlib.steerers.static as static

    with pytest.warns(DeprecationWarning, match="moved to steerlib.steerers.mean"):
        assert static.MeanSteer is MeanSteer
    with pytest.warns(DeprecationWarning, match="moved to steerlib.steerers.baselines"):
        assert static.NoSteer is NoSteer
    import sys

    sys.modules.pop("steerlib.steerers.vectors", None)
    with pytest.warns(DeprecationWarning, match="steerlib.steerers.vectors moved"):
        mod = importlib.import_module("steerlib.steerers.vectors")
    assert mod.StaticVectors is StaticVectors


# ---------------------------------------------------------------------------- a new method -
@pytest.fixture
def median_method():
    """A new method defined in one place (as in docs/adding-a-method.md), unregistered afterwards."""
    from typing_extensions import Unpack

    from steerlib.steerers import P2SParams

    class MedianSteer(MeanSteer):
        method = "median_test"

        def __init__(self, layer: int = 0, *, behaviors=None, **shared: Unpack[P2SParams]) -> None:
            super().__init__(layer, behaviors=behaviors, **shared)

        def _learn(self, items, z, h):
            self.vector_ = z.median(0).values

    yield MedianSteer
    del Steerer._registry["median_test"]


def test_a_new_method_is_one_class(median_method, llama, tmp_path, monkeypatch):
    """Registered by defining it; compare builds it by name, shares the extraction with Mean-S, saves it;
    export writes it; nothing else in the library names it."""
    from steerlib.eval.compare import compare
    from steerlib.export import export_gguf, import_gguf

    _, sm = llama
    items = _items(6)
    assert METHODS["median_test"] is median_method
    calls = []
    real = extract_mod.extract_p2s_layers
    monkeypatch.setattr(extract_mod, "extract_p2s_layers", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = compare(sm, items, items[:3], ["none", "mean", "median_test"], alphas=[1.0], layers=[LAYER],
                     out_dir=tmp_path / "cmp", max_new_tokens=3, progress=False)
    assert [r["method"] for r in result.rows] == ["none", "mean", "median_test"]
    assert len(calls) == 1  # one shared extraction for Mean-S and the new method
    saved = Steerer.from_pretrained(tmp_path / "cmp" / "steerers" / f"median_test-L{LAYER}", model=sm)
    z = extract_p2s(sm, items, LAYER, progress=False).z  # the independent reference: P2S vectors, then the median
    assert type(saved) is median_method and torch.allclose(saved.vector_, z.median(0).values, atol=1e-5)
    back = import_gguf(export_gguf(saved, tmp_path / "m.gguf", model_hint="llama"), sm)
    assert torch.allclose(back.as_dict()[LAYER], saved.vector_)
