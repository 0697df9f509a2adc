"""The peers' methods against independent references: scikit-learn (PCA, probes, classifiers),
raw forward hooks (ablation, norm preservation, composition, conditional steering) and hand
computations (the PCA sign rule, CAST's per-row decisions on a padded batch)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression, LogisticRegression

from steerlib import ContrastiveItem, SteerableModel
from steerlib.errors import PersistenceError
from steerlib.export import export_gguf
from steerlib.intervention import Intervention
from steerlib.steerers import (
    L2S,
    AblateThenAdd,
    ClassifySteer,
    Composite,
    ConditionalSteer,
    DirectionalAblation,
    LinearProbe,
    LogisticProbe,
    MeanSteer,
    PCACenter,
    PCADiff,
    StaticVectors,
    Steerer,
    extract_p2s,
)
from steerlib.steerers.conditional import cast_score
from steerlib.steerers.probe import pos_neg_activations
from steerlib.testing import build_tiny

from reference import hidden_states

LAYER = 1


@pytest.fixture(scope="module")
def llama():
    t = build_tiny("llama")
    return t, SteerableModel(t.model, t.processor)


def _items(n=10):
    return [ContrastiveItem(prompt=f"Question {i} about the {'cat' if i % 2 else 'weather'} and more" * (1 + i % 3),
                            positive="I cannot help with that." if i % 2 else "Sure.",
                            negative=f"Sure, here is how {i}." if i % 2 else "Sure.",
                            behavior="harmful" if i % 2 else "benign", id=f"q{i}") for i in range(n)]


def _z(n=12, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    return base[None] * torch.rand(n, 1, generator=g) * 3 + torch.randn(n, d, generator=g)


# ------------------------------------------------------------------------ PCA ---------
def test_pca_diff_and_center_match_sklearn_and_the_sign_rule(llama):
    _, sm = llama
    items = [it for it in _items(12) if it.positive != it.negative]
    z = extract_p2s(sm, items, LAYER, progress=False).z
    for klass, data in ((PCADiff, z.numpy()), (PCACenter, np.concatenate([z.numpy() / 2, -z.numpy() / 2]))):
        st = klass(LAYER, progress=False).fit(sm, items)
        ref = torch.as_tensor(PCA(n_components=1).fit(data.astype(np.float64)).components_[0])
        d = st.vectors_[0].double()
        assert abs(float(torch.nn.functional.cosine_similarity(d, ref, dim=0))) > 0.9999
        # the sign rule by hand: more pairs project positive above negative than below
        assert int((z.double() @ d > 0).sum()) >= int((z.double() @ d < 0).sum())
        # the scale: unit direction times the mean projection
        u = ref * (1 if float(ref @ d) > 0 else -1)
        assert torch.allclose(d, u * float((z.double() @ u).mean()), atol=1e-4)
        unit = klass(LAYER, scale="unit", progress=False).fit(sm, items)
        assert abs(float(unit.vectors_[0].norm()) - 1) < 1e-5


def test_pca_sign_flips_towards_the_positive():
    z = _z()
    st = PCADiff(0)
    d = st.direction(-z)  # all differences reversed: the direction reverses too
    assert torch.allclose(st.direction(z), -d)
    assert int(((-z).double() @ d > 0).sum()) > len(z) // 2


def test_pca_multi_layer_one_direction_per_layer(llama, tmp_path):
    _, sm = llama
    items = _items(10)
    st = PCACenter(0, layers=[1, 2], progress=False).fit(sm, items)
    assert set(st.static_vectors()) == {1, 2}
    single = PCACenter(2, progress=False).fit(sm, items)
    assert torch.allclose(st.as_dict()[2], single.vectors_[0], atol=1e-5)
    iv = st.intervention(sm, items[:2])
    assert iv.layers == (1, 2)
    st.save_pretrained(tmp_path / "p")
    back = Steerer.from_pretrained(tmp_path / "p", model=sm)
    assert torch.equal(back.vectors_, st.vectors_)
    export_gguf(st, tmp_path / "p.gguf", model_hint="llama")


# ------------------------------------------------------------------------ probes ------
def test_probe_directions_match_sklearn(llama):
    _, sm = llama
    items = _items(12)
    differ = [it for it in items if it.positive != it.negative]
    pos, neg = pos_neg_activations(sm, differ, LAYER, progress=False)
    z = extract_p2s(sm, differ, LAYER, progress=False).z
    assert torch.allclose(pos - neg, z, atol=1e-4)  # the same features P2S reads
    x = torch.cat([pos, neg]).double().numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    scale = float((pos - neg).double().norm(dim=-1).mean())
    for st, est in ((LogisticProbe(LAYER, progress=False), LogisticRegression(max_iter=1000)),
                    (LinearProbe(LAYER, progress=False), LinearRegression(fit_intercept=False))):
        st.fit(sm, items)
        coef = torch.as_tensor(est.fit(x, y).coef_.reshape(-1))
        ref = coef / coef.norm() * scale
        assert torch.allclose(st.vector_.double(), ref, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------ classify ----
@pytest.mark.parametrize("classifier", ["logistic", "centroid"])
def test_classify_then_steer_matches_sklearn_and_class_means(llama, classifier):
    _, sm = llama
    items = _items(12)
    st = ClassifySteer(LAYER, input_layer=0, classifier=classifier, progress=False).fit(sm, items)
    feats = extract_p2s(sm, items, LAYER, input_layer=0, progress=False)
    x = feats.h.double().numpy()
    y = np.array([it.behavior for it in items])
    if classifier == "logistic":
        ref = LogisticRegression(max_iter=1000).fit(x, y).predict(x)
    else:
        cents = {b: x[y == b].mean(0) for b in sorted(set(y))}
        ref = np.array([min(cents, key=lambda b: ((row - cents[b]) ** 2).sum()) for row in x])
    got = [st.classes_[k] for k in st.classify(feats.h).tolist()]
    assert got == ref.tolist()
    means = {b: feats.z[torch.as_tensor(y == b)].mean(0) for b in set(y)}
    v = st.vectors(sm, items)
    for i, b in enumerate(got):
        assert torch.allclose(v[i], means[b], atol=1e-5)
    assert not bool(means["benign"].any())  # benign: zero vector, left unsteered
    assert st.steered_rows(sm, items) == [i for i, b in enumerate(got) if b == "harmful"]
    # in-pass prediction == precomputed vectors
    a = sm.generate(sm.encode([it.prompt for it in items[:4]]), st.intervention(sm, items[:4]), max_new_tokens=3)
    b = sm.generate(sm.encode([it.prompt for it in items[:4]]),
                    st.intervention(sm, items[:4], vectors=v[:4]), max_new_tokens=3)
    assert torch.equal(a.sequences, b.sequences)


# ------------------------------------------------------------------------ ablation ----
def _hook_logits(t, sm, batch, fn_by_layer):
    """Logits with raw forward hooks ``fn_by_layer[layer](h, mask)`` on the decoder blocks."""
    layers = sm.adapter.layers(t.model)
    handles = []
    for layer, fn in fn_by_layer.items():
        def hook(_m, _i, out, fn=fn):
            h = out[0] if isinstance(out, tuple) else out
            h = fn(h)
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        handles.append(layers[layer].register_forward_hook(hook))
    try:
        inputs = {k: v for k, v in batch.inputs.items()}
        am = inputs["attention_mask"].long()
        with torch.no_grad():
            return t.model(**inputs, position_ids=(am.cumsum(-1) - 1).masked_fill(am == 0, 1)).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("backend", ["nnsight", "hooks"])
def test_ablation_add_and_norm_preservation_match_a_raw_hook(llama, backend):
    t, _ = llama
    sm = SteerableModel(t.model, t.processor, backend=backend)
    batch = sm.encode(["Hi", "A much longer prompt here, with padding on the left"])
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, sm.hidden_size, generator=g)  # one direction per row
    v = torch.randn(sm.hidden_size, generator=g)
    un = u / u.norm(dim=-1, keepdim=True)
    mask = batch.attention_mask.bool()[..., None]

    def edit(h, add, norm):
        x = h - mask * (h * un[:, None]).sum(-1, keepdim=True) * un[:, None]
        if add:
            x = x + 0.7 * mask * v
        if norm:
            x = torch.where(mask, x * h.norm(dim=-1, keepdim=True) / x.norm(dim=-1, keepdim=True), h)
        return x

    real = batch.attention_mask.bool()
    for norm in (False, True):
        iv = Intervention.build([0, LAYER], {LAYER: v}, alpha=0.7, ablate={0: u, LAYER: u}, norm_preserving=norm)
        ref = _hook_logits(t, sm, batch, {0: lambda h, n=norm: edit(h, False, n),
                                          LAYER: lambda h, n=norm: edit(h, True, n)})
        got = sm.forward(batch, iv)
        assert torch.allclose(got[real], ref[real], atol=1e-4)
    # norm-preserving addition alone
    iv = Intervention.build(LAYER, v, alpha=2.0, norm_preserving=True)
    ref = _hook_logits(t, sm, batch, {LAYER: lambda h: torch.where(
        mask, (h + 2 * v) * h.norm(dim=-1, keepdim=True) / (h + 2 * v).norm(dim=-1, keepdim=True), h)})
    real = batch.attention_mask.bool()
    assert torch.allclose(sm.forward(batch, iv)[real], ref[real], atol=1e-4)


def test_ablation_steerers_generate_like_a_hook_and_round_trip(llama, tmp_path):
    t, sm = llama
    items = _items(10)
    ab = DirectionalAblation(LAYER, ablate_layers="all", progress=False).fit(sm, items)
    aa = AblateThenAdd(LAYER, alpha=1.5, progress=False).fit(sm, items)
    mean = MeanSteer(LAYER, behaviors=["harmful"], progress=False).fit(sm, items)  # the items with a target
    assert torch.allclose(aa.vector_, mean.vector_)
    batch = sm.encode(["Hi", "A longer prompt with left padding"])
    u = ab.direction_
    mask = batch.attention_mask.bool()[..., None]
    real = batch.attention_mask.bool()

    def ablate(h):
        return h - mask * (h @ u)[..., None] * u

    ref = _hook_logits(t, sm, batch, {k: ablate for k in range(sm.num_layers)})
    got = sm.forward(batch, ab.intervention(sm, ["Hi", "x"]))
    assert torch.allclose(got[real], ref[real], atol=1e-4)
    ref = _hook_logits(t, sm, batch, {LAYER: lambda h: ablate(h) + 1.5 * mask * aa.vector_})
    assert torch.allclose(sm.forward(batch, aa.intervention(sm, ["Hi", "x"]))[real], ref[real], atol=1e-4)
    with pytest.raises(PersistenceError, match="static"):
        export_gguf(ab, tmp_path / "a.gguf", model_hint="llama")


def test_additive_arithmetic_is_unchanged_without_the_options(llama):
    """The plain addition path is bit-identical to the hand formula (the options take another branch)."""
    t, sm = llama
    batch = sm.encode(["Hi", "A longer prompt with left padding"])
    v = torch.randn(2, sm.hidden_size, generator=torch.Generator().manual_seed(3))
    mask = batch.attention_mask.to(torch.float32)[..., None]
    ref = _hook_logits(t, sm, batch, {LAYER: lambda h: h + 0.5 * mask * v[:, None, :]})
    assert torch.equal(sm.forward(batch, Intervention.build(LAYER, v, alpha=0.5)), ref)


# ------------------------------------------------------------------------ conditional -
def test_conditional_decisions_per_row_on_a_padded_batch_match_a_hand_computation(llama):
    t, sm = llama
    items = _items(12)
    st = ConditionalSteer(LAYER, condition_layers=[0, 1, 2], progress=False).fit(sm, items)
    assert all(0 <= c["f1"] <= 1 for c in st.conditions_)
    prompts = [it.prompt for it in items[:6]]
    batch = sm.encode(prompts)
    assert bool((batch.attention_mask == 0).any())  # padded
    hs = hidden_states(t.model, dict(batch.inputs), True)
    cond = st.conditions_[0]
    h = hs[cond["layer"] + 1]
    m = batch.attention_mask.to(h.dtype)[..., None]
    mean = (h * m).sum(1) / m.sum(1)
    c = st.condition_vectors_[0].double()
    hd = mean.double()
    proj = (hd @ c)[:, None] * c[None] / (c @ c)
    score = torch.nn.functional.cosine_similarity(hd, torch.tanh(proj), dim=-1)
    hand = score > cond["threshold"] if cond["comparator"] == "larger" else score < cond["threshold"]
    assert torch.equal(st.decisions(sm, prompts), hand)
    assert torch.equal(st.decisions(sm, prompts, batch), hand)  # batched == one by one
    one = torch.stack([st.decisions(sm, [p])[0] for p in prompts])
    assert torch.equal(one, hand)
    # generation: the rows that pass get the behaviour vector, the others run unsteered
    vec = hand[:, None].float() * st.vector_[None]
    a = sm.generate(batch, st.intervention(sm, as_items_(prompts), batch), max_new_tokens=3)
    b = sm.generate(batch, Intervention.build(LAYER, vec), max_new_tokens=3)
    assert torch.equal(a.sequences, b.sequences)


def as_items_(prompts):
    return [ContrastiveItem(prompt=p) for p in prompts]


def test_conditional_rules_and_the_threshold_search(llama, tmp_path):
    _, sm = llama
    items = _items(12)
    for i, it in enumerate(items):
        if i % 4 == 3:
            items[i] = it.with_(behavior="advice")
    any_ = ConditionalSteer(LAYER, condition_behaviors=[["harmful"], ["advice"]], rule="any",
                            progress=False).fit(sm, items)
    all_ = ConditionalSteer(LAYER, condition_behaviors=[["harmful", "advice"], ["advice"]], rule="all",
                            progress=False).fit(sm, items)
    states = ConditionalSteer.prompt_states(sm, items, [LAYER])
    met = []
    for c, cond in zip(any_.condition_vectors_, any_.conditions_):
        s = cast_score(states[cond["layer"]], c)
        met.append(s > cond["threshold"] if cond["comparator"] == "larger" else s < cond["threshold"])
    assert torch.equal(any_.decide(states), met[0] | met[1])
    met_all = []
    for c, cond in zip(all_.condition_vectors_, all_.conditions_):
        s_ = cast_score(states[cond["layer"]], c)
        met_all.append(s_ > cond["threshold"] if cond["comparator"] == "larger" else s_ < cond["threshold"])
    assert torch.equal(all_.decide(states), met_all[0] & met_all[1])
    # the search: on the training items the chosen threshold's F1 is the best over a fine grid
    s = cast_score(states[LAYER], any_.condition_vectors_[0])
    labels = torch.tensor([it.behavior == "harmful" for it in items])
    best = 0.0
    for t_ in torch.linspace(float(s.min()) - 1e-3, float(s.max()) + 1e-3, 2001):
        for pred in (s > t_, s < t_):
            tp = int((pred & labels).sum())
            best = max(best, 2 * tp / max(1, int(pred.sum()) + int(labels.sum())))
    assert any_.conditions_[0]["f1"] >= best - 1e-9
    any_.save_pretrained(tmp_path / "c")
    back = Steerer.from_pretrained(tmp_path / "c", model=sm)
    assert back.conditions_ == any_.conditions_
    assert torch.equal(back.decisions(sm, items), any_.decisions(sm, items))
    with pytest.raises(PersistenceError):
        export_gguf(any_, tmp_path / "c.gguf", model_hint="llama")


# ------------------------------------------------------------------------ composition -
def test_composition_in_one_pass_matches_one_hand_hook(llama, tmp_path):
    t, sm = llama
    items = _items(10)
    mean = MeanSteer(LAYER, alpha=1.0, progress=False).fit(sm, items)
    pca = PCADiff(LAYER, progress=False).fit(sm, items)
    l2s = L2S(LAYER, input_layer=0, hidden=4, epochs=2, progress=False).fit(sm, items)
    ab = DirectionalAblation(0, progress=False).fit(sm, items)
    comp = Composite.of([mean, l2s, ab, pca], [0.5, 2.0, 1.0, -1.0])
    prompts = ["Hi", "A longer prompt with left padding"]
    batch = sm.encode(prompts)
    mask = batch.attention_mask.bool()[..., None]
    real = batch.attention_mask.bool()
    g = l2s.vectors(sm, prompts)
    u = ab.direction_
    add = 0.5 * mean.vector_ + 2.0 * g - 1.0 * pca.vectors_[0]
    ref = _hook_logits(t, sm, batch, {0: lambda h: h - mask * (h @ u)[..., None] * u,
                                      LAYER: lambda h: h + mask * add[:, None, :]})
    got = sm.forward(batch, comp.intervention(sm, as_items_(prompts), batch))
    assert torch.allclose(got[real], ref[real], atol=1e-4)
    # alphas scale every component
    half = sm.forward(batch, comp.intervention(sm, as_items_(prompts), batch, alpha=0.5))
    ref = _hook_logits(t, sm, batch, {0: lambda h: h - mask * (h @ u)[..., None] * u,
                                      LAYER: lambda h: h + mask * 0.5 * add[:, None, :]})
    assert torch.allclose(half[real], ref[real], atol=1e-4)
    comp.save_pretrained(tmp_path / "c")
    back = Steerer.from_pretrained(tmp_path / "c", model=sm)
    assert torch.equal(back.vectors(sm, prompts), comp.vectors(sm, prompts))
    assert back.generate(sm, prompts, max_new_tokens=3) == comp.generate(sm, prompts, max_new_tokens=3)
    # L2S + a static steerer by arithmetic
    mixed = l2s + 0.5 * mean
    assert type(mixed) is Composite
    with pytest.raises(PersistenceError):
        export_gguf(mixed, tmp_path / "m.gguf", model_hint="llama")


def test_static_vector_arithmetic(llama, tmp_path):
    _, sm = llama
    items = _items(10)
    a = MeanSteer(LAYER, progress=False).fit(sm, items)
    b = PCACenter(LAYER, progress=False).fit(sm, items)
    c = a + 0.5 * b
    assert type(c) is StaticVectors
    assert torch.allclose(c.as_dict()[LAYER], a.vector_ + 0.5 * b.vectors_[0])
    d = a - b
    assert torch.allclose(d.as_dict()[LAYER], a.vector_ - b.vectors_[0])
    assert torch.allclose((2 * a).as_dict()[LAYER], 2 * a.vector_)
    assert torch.allclose(sum([a, b]).as_dict()[LAYER], a.vector_ + b.vectors_[0])
    export_gguf(c, tmp_path / "c.gguf", model_hint="llama")


def test_composite_from_names_fits_and_runs_in_compare(llama, tmp_path):
    from steerlib.eval.compare import compare

    _, sm = llama
    items = _items(10)
    comp = Composite(LAYER, components=["mean", "pca_center"], weights=[1.0, 0.5], progress=False).fit(sm, items)
    mean = MeanSteer(LAYER, progress=False).fit(sm, items)
    pca = PCACenter(LAYER, progress=False).fit(sm, items)
    assert torch.allclose(comp.static_vectors()[LAYER], mean.vector_ + 0.5 * pca.vectors_[0], atol=1e-5)
    methods = ["none", "pca_diff", "pca_center", "probe_logistic", "probe_linear", "classify", "ablate",
               "ablate_add", "conditional", "compose"]
    res = compare(sm, items, items[:4], methods, alphas=[1.0], layers=[LAYER], out_dir=tmp_path / "run",
                  max_new_tokens=3, progress=False)
    assert {r["method"] for r in res.rows} == set(methods)
    for m in methods[1:]:
        assert (tmp_path / "run" / "steerers").is_dir()
