"""Numerics checked in the dtype they run in (alpha times a vector's norm must fit the hidden
states' dtype; g's output is checked like static vectors) and every steerer's settings validated
in ``fit`` with the parameter named."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlib import Intervention, SteerableModel
from steerlib.errors import NonFiniteError, ParameterError, PersistenceError, SteerlibError
from steerlib.intervention import check_scaled_finite
from steerlib.steerers import L2S, P2S, MeanSteer, Steerer
from steerlib.testing import build_tiny
from steerlib.testing.bad_inputs import toy_items as _items


@pytest.fixture(scope="module")
def sm() -> SteerableModel:
    t = build_tiny("llama")
    return SteerableModel(t.model, t.processor)


@pytest.fixture(scope="module")
def mean(sm):
    return MeanSteer(1, progress=False).fit(sm, _items())


@pytest.fixture(scope="module")
def l2s(sm):
    return L2S(1, hidden=4, epochs=2, progress=False).fit(sm, _items())


# ---------------------------------------------------------------------- alpha x norm ----
def test_alpha_1e39_is_refused_with_float32_hidden_states(sm, mean):
    assert sm.dtype == torch.float32
    with pytest.raises(NonFiniteError, match=r"alpha = 1e\+39 is more than torch.float32"):
        mean.generate(sm, ["Hello"], alpha=1e39, max_new_tokens=2, progress=False)
    batch = sm.encode(["Hello"])
    with pytest.raises(NonFiniteError, match=r"times the steering vector for layer 1's norm \(8\) is 8e\+38"):
        sm.generate(batch, Intervention.build(1, torch.ones(64), alpha=1e38), max_new_tokens=2)  # alpha fits, product not
    assert mean.generate(sm, ["Hello"], alpha=1e3, max_new_tokens=2, progress=False)  # a large finite one works


def test_the_check_follows_the_dtype(mean):
    """float16 holds 65504: alpha 1e5 with a unit vector is refused there, fine in float32 / bfloat16."""
    v = torch.nn.functional.normalize(torch.ones(64), dim=0)
    iv = Intervention.build(1, v, alpha=1e5)
    iv.validate(3, 64, 1, dtype=torch.float32)
    iv.validate(3, 64, 1, dtype=torch.bfloat16)
    with pytest.raises(NonFiniteError, match="torch.float16"):
        iv.validate(3, 64, 1, dtype=torch.float16)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(alpha=st.floats(-1e40, 1e40, allow_nan=False), scale=st.floats(1e-3, 1e39),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_refused_whenever_the_product_overflows_in_the_dtype(alpha, scale, dtype):
    """Against the arithmetic itself: when ``alpha * v`` computed in ``dtype`` (as the engine adds
    it) is not finite, the check refuses; when the check passes, the product is finite."""
    v = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64) * scale
    vd = v.to(dtype)
    if not bool(torch.isfinite(vd).all()):
        return  # the vector itself does not fit the dtype (check_vector's job)
    product = torch.tensor(alpha, dtype=torch.float64).to(dtype) * vd
    try:
        check_scaled_finite(vd, alpha, dtype, "v")
    except NonFiniteError:
        return
    assert bool(torch.isfinite(product).all())


@pytest.mark.parametrize("backend", ["nnsight", "hooks"])
def test_g_output_is_checked_at_generate_time(sm, l2s, backend):
    sm = SteerableModel(sm.model, sm.processor, backend=backend)
    st_ = L2S(1, hidden=4, epochs=2, progress=False).fit(sm, _items())
    with torch.no_grad():
        st_.net_.decoder.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="g predicted a vector with NaN"):
        st_.generate(sm, ["Hello"], max_new_tokens=2, progress=False)
    with pytest.raises(NonFiniteError, match="g predicted"):
        st_.vectors(sm, ["Hello"])
    big = L2S(1, input_layer=2, hidden=4, epochs=2, progress=False).fit(sm, _items())  # extra-prefill path
    with torch.no_grad():
        big.net_.decoder.weight.fill_(1e30)
    with pytest.raises(NonFiniteError, match="predicted vector's norm"):
        big.generate(sm, ["Hello"], alpha=1e10, max_new_tokens=2, progress=False)
    assert l2s.generate(sm, ["Hello"], max_new_tokens=2, progress=False)


# ---------------------------------------------------------------------- settings --------
BAD_L2S = [("hidden", -1), ("hidden", 0), ("hidden", 2.5), ("hidden", True), ("epochs", 0), ("epochs", "10"),
           ("lr", math.nan), ("lr", 0.0), ("lr", -1e-3), ("lr", math.inf), ("train_batch_size", 0),
           ("l1_weight", -1.0), ("l1_weight", math.nan), ("cos_weight", math.inf), ("cos_warmup_epochs", -1),
           ("val_cos_weight", -0.1), ("class_balance", "yes"), ("val_fraction", 1.0), ("val_fraction", -0.1),
           ("keep_best", 1), ("warmup_epochs", -2), ("gate", 1.5), ("gate", math.nan), ("gate", "auto"),
           ("gate_folds", 1), ("init", "zeros"), ("scheduler", "linear"), ("continuation_tokens", -1),
           ("batch_size", 0), ("seed", -1), ("seed", 1.5), ("progress", "no"), ("equalize_norms_to", 3)]


@pytest.mark.parametrize("name, value", BAD_L2S)
def test_l2s_settings_are_validated_in_fit_with_the_parameter_named(sm, name, value):
    with pytest.raises(SteerlibError, match=name) as ei:
        L2S(1, **{name: value}).fit(sm, _items())
    assert isinstance(ei.value, ValueError)  # ParameterError / DataError: both ValueErrors


@pytest.mark.parametrize("name, value", [("hidden", -1), ("lr", math.nan), ("epochs", 0)])
def test_l2s_fit_features_validates_too(name, value):
    h, z = torch.randn(6, 8), torch.randn(6, 8)
    with pytest.raises(ParameterError, match=name):
        L2S(0, **{name: value}, progress=False).fit_features(h, z)


@pytest.mark.parametrize("klass, name, value", [
    (MeanSteer, "continuation_tokens", -5), (MeanSteer, "batch_size", 0), (MeanSteer, "alpha", math.nan),
    (P2S, "continuation_tokens", 2.0), (P2S, "seed", "0"), (MeanSteer, "reduction", "median")])
def test_p2s_based_settings(sm, klass, name, value):
    with pytest.raises(SteerlibError, match=name if name != "reduction" else "reduction|median"):
        klass(1, **{name: value}).fit(sm, _items())


def test_other_methods_settings(sm):
    reg = Steerer._registry
    cases = [("classify", {"C": 0.0}, "C"), ("classify", {"max_iter": 0}, "max_iter"),
             ("classify", {"classifier": "svm"}, "classifier"), ("pca_diff", {"scale": "huge"}, "scale"),
             ("conditional", {"rule": "most"}, "rule"), ("ablate", {"norm_preserving": "yes"}, "norm_preserving")]
    for method, kw, name in cases:
        if method not in reg:
            continue
        with pytest.raises(SteerlibError, match=name):
            reg[method](1, **kw).fit(sm, _items())


def test_saved_settings_are_validated_on_load(sm, l2s, tmp_path):
    import json

    path = l2s.save_pretrained(tmp_path / "g")
    meta = json.loads((path / "steerer.json").read_text())
    meta["params"]["epochs"] = -4
    (path / "steerer.json").write_text(json.dumps(meta))
    with pytest.raises(PersistenceError, match="epochs must be a positive int"):
        Steerer.from_pretrained(path)
