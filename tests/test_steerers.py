"""Steerers: P2S against hand computations, Mean-S / Mean-S(BA), L2S learning and one-pass
equivalence, save/load round trips, and the errors users hit."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from reference import hook_generate, max_logit_diff
from steerlib import ContrastiveItem, Intervention, SteerableModel
from steerlib.errors import CompatibilityError, DataError, NotFittedError, PersistenceError
from steerlib.steerers import (
    GATE_GRID,
    L2S,
    METHODS,
    MeanSteer,
    MeanSteerBA,
    NormRandom,
    NoSteer,
    P2S,
    PromptSteer,
    Steerer,
    extract_p2s,
    stratified_folds,
)
from steerlib.testing import build_tiny, tiny_image

LAYER = 1


@pytest.fixture(scope="module")
def llama():
    t = build_tiny("llama")
    return t, SteerableModel(t.model, t.processor)


def _items(n=8):
    beh = ["harmful", "benign"]
    return [ContrastiveItem(prompt=f"Question number {i} about the {'cat' if i % 2 else 'weather'} today",
                            positive="I cannot help with that." if i % 2 else "Sure.",
                            negative="Sure, here is how." if i % 2 else "Sure.",
                            behavior=beh[i % 2]) for i in range(n)]


def _hand_p2s(t, sm, item, reduction):
    """P2S from output_hidden_states on the two teacher-forced sequences, run one at a time."""
    out = []
    for comp in (item.positive, item.negative):
        close = reduction == "last"
        b = sm.encode([item.prompt], [list(item.images)] if item.images else None, completions=[comp], close_turn=close)
        with torch.no_grad():
            hs = t.model(**b.inputs, output_hidden_states=True).hidden_states[LAYER + 1][0]
        if close:
            out.append(hs[-1])
        else:
            # the completion = every token after the rendered generation prompt
            prompt_only = sm.encode([item.prompt], [list(item.images)] if item.images else None)
            n = b.seq_len - prompt_only.seq_len
            assert t.tokenizer.decode(b.input_ids[0, -n:]).strip() == comp
            out.append(hs[-n:].mean(0))
    return out[0] - out[1]


@pytest.mark.parametrize("reduction", ["last", "completion_mean"])
def test_p2s_equals_hand_computation(llama, reduction):
    t, sm = llama
    items = [it for it in _items(6) if it.positive != it.negative]
    feats = extract_p2s(sm, items, LAYER, reduction=reduction, batch_size=3, progress=False)
    for i, it in enumerate(items):
        ref = _hand_p2s(t, sm, it, reduction)
        assert torch.allclose(feats.z[i], ref, atol=1e-5), (i, (feats.z[i] - ref).abs().max())


@pytest.mark.parametrize("reduction", ["last", "completion_mean"])
def test_p2s_mixed_batch_skips_identical_completions(llama, reduction):
    """Items with positive == negative get z = 0 exactly (one run only); the others still match the hand
    computation and every item's L2S input equals a plain read of its prompt."""
    t, sm = llama
    items = _items(6)
    feats = extract_p2s(sm, items, LAYER, reduction=reduction, input_layer=LAYER, batch_size=4, progress=False)
    plain = sm.read(sm.encode([it.prompt for it in items]), LAYER, "last_prompt")[LAYER]
    for i, it in enumerate(items):
        if it.positive == it.negative:
            assert torch.equal(feats.z[i], torch.zeros_like(feats.z[i]))
        else:
            assert torch.allclose(feats.z[i], _hand_p2s(t, sm, it, reduction), atol=1e-5)
    assert torch.allclose(feats.h, plain, atol=1e-5)


def test_p2s_on_a_vlm_equals_hand_computation():
    t = build_tiny("llava")
    sm = SteerableModel(t.model, t.processor)
    items = [ContrastiveItem(prompt="Is there a cat in the image?", positive="Yes, the image", negative="No, the image",
                             images=(tiny_image(3),)),
             ContrastiveItem(prompt="Is there a dog?", positive="No, the image", negative="Yes, the image",
                             images=(tiny_image(4),))]
    feats = extract_p2s(sm, items, LAYER, reduction="completion_mean", progress=False)
    for i, it in enumerate(items):
        assert torch.allclose(feats.z[i], _hand_p2s(t, sm, it, "completion_mean"), atol=1e-5)


def test_p2s_sampled_mean_equals_hand_computation(llama):
    t, sm = llama
    item = _items(2)[1]
    n_new, seed = 6, 5
    feats = extract_p2s(sm, [item], LAYER, reduction="sampled_mean", continuation_tokens=n_new, seed=seed,
                        progress=False)
    # hand: same batch layout (pos row, neg row), same seed, plain HF sampling, then one forward
    b = sm.encode([item.prompt] * 2, completions=[item.positive, item.negative])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        seqs = t.model.generate(**b.inputs, max_new_tokens=n_new, do_sample=True,
                                pad_token_id=t.tokenizer.pad_token_id)
    eos = t.tokenizer.eos_token_id
    S = b.seq_len
    am = torch.cat([b.attention_mask, torch.ones(2, seqs.shape[1] - S, dtype=torch.long)], 1)
    pos_ids = (am.cumsum(-1) - 1).masked_fill(am == 0, 1)
    with torch.no_grad():
        hs = t.model(input_ids=seqs, attention_mask=am, position_ids=pos_ids, output_hidden_states=True).hidden_states[LAYER + 1]
    means = []
    for r in range(2):
        n_c = int(b.completion_len[r])
        states = [hs[r, S - n_c + j] for j in range(n_c)]
        for j in range(seqs.shape[1] - S - 1):  # fed tokens: generated tokens except the last one
            if seqs[r, S + j] == eos:
                break
            states.append(hs[r, S + j])
        means.append(torch.stack(states).mean(0))
    assert torch.allclose(feats.z[0], means[0] - means[1], atol=1e-4)


def test_mean_steer_is_mean_of_p2s(llama):
    t, sm = llama
    items = _items(8)
    z = extract_p2s(sm, items, LAYER, progress=False).z
    ms = MeanSteer(LAYER, progress=False).fit(sm, items)
    assert torch.allclose(ms.vector_, z.mean(0), atol=1e-6)
    harmful = [i for i, it in enumerate(items) if it.behavior == "harmful"]
    ms_h = MeanSteer(LAYER, behaviors=["harmful"], progress=False).fit(sm, items)
    assert torch.allclose(ms_h.vector_, z[harmful].mean(0), atol=1e-6)
    v = ms.vectors(sm, ["a", "b", "c"])
    assert v.shape == (3, sm.hidden_size) and torch.equal(v[0], v[2])


def test_mean_steer_ba_uses_one_pair_for_all(llama):
    t, sm = llama
    items = _items(6)
    ba = MeanSteerBA(LAYER, positive="Harmful", negative="Safe", prompt_suffix=" Safe or harmful?", progress=False)
    ba.fit(sm, items)
    fixed = [it.with_(prompt=it.prompt + " Safe or harmful?", positive="Harmful", negative="Safe") for it in items]
    assert torch.allclose(ba.vector_, extract_p2s(sm, fixed, LAYER, progress=False).z.mean(0), atol=1e-6)


def test_p2s_needs_completions(llama):
    t, sm = llama
    with pytest.raises(DataError, match="no positive/negative completion"):
        P2S(LAYER).fit(sm, []).vectors(sm, [ContrastiveItem(prompt="hi")])


def test_norm_random_matches_p2s_norms_and_is_seeded(llama):
    t, sm = llama
    items = [it for it in _items(6) if it.positive != it.negative]
    nr = NormRandom(LAYER, seed=3, progress=False).fit(sm, [])
    v = nr.vectors(sm, items)
    z = P2S(LAYER, progress=False).fit(sm, []).vectors(sm, items)
    assert torch.allclose(v.norm(dim=-1), z.norm(dim=-1), atol=1e-4)
    assert torch.equal(v[1], nr.vectors(sm, items[1:2])[0])  # batch composition does not matter
    assert float(torch.nn.functional.cosine_similarity(v, z).abs().max()) < 0.9


def test_l2s_learns_a_planted_mapping():
    g = torch.Generator().manual_seed(0)
    n, d = 600, 48
    h = torch.randn(n, d, generator=g)
    a = torch.randn(d, 8, generator=g) / d ** 0.5
    b = torch.randn(8, d, generator=g)
    z = torch.tanh(h @ a * 2) @ b  # a known nonlinear function of the inputs
    l2s = L2S(0, hidden=16, epochs=150, lr=3e-3, train_batch_size=64, val_fraction=0.1, progress=False)
    l2s.fit_features(h[:500], z[:500])
    pred = l2s.predict(h[500:])
    cos = torch.nn.functional.cosine_similarity(pred, z[500:], dim=-1).mean()
    assert cos >= 0.9, float(cos)
    assert l2s.history_[-1]["val_cos"] > 0.8


def test_l2s_class_balanced_and_dict_init_run():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(80, 16, generator=g)
    z = torch.randn(80, 16, generator=g)
    beh = ["a"] * 60 + ["b"] * 20
    pytest.importorskip("sklearn")
    l2s = L2S(0, hidden=4, epochs=3, init="dict", class_balance=True, scheduler="cosine", warmup_epochs=1,
              cos_warmup_epochs=2, progress=False).fit_features(h, z, beh)
    assert l2s.decoder_weight_.shape == (16, 4)


@pytest.mark.parametrize(("steer_layer", "source_layer"), [(1, 0), (1, 1), (0, 1)])
def test_l2s_single_pass_equals_two_pass_reference(llama, steer_layer, source_layer):
    """L' <= L*: g runs inside generate; L' > L*: one extra prefill. Both equal predict-then-hook.

    (The last layer is avoided: HF's last hidden state has the final norm applied.)"""
    t, sm = llama
    items = _items(8)
    l2s = L2S(steer_layer, input_layer=source_layer, hidden=8, epochs=3, lr=1e-2, progress=False).fit(sm, items)
    prompts = [items[0].prompt, items[3].prompt + " and more words"]
    g = l2s.generate_batch(sm, prompts, alpha=3.0, max_new_tokens=5, output_logits=True)
    # two-pass reference: HF hidden states -> g -> raw hook during generate
    b = sm.encode(prompts)
    am = b.attention_mask.long()
    with torch.no_grad():
        hs = t.model(**b.inputs, position_ids=(am.cumsum(-1) - 1).masked_fill(am == 0, 1),
                     output_hidden_states=True).hidden_states[source_layer + 1][:, -1]
    v = l2s.predict(hs)
    ref = hook_generate(t.model, t.model.model.layers[steer_layer], b.inputs, v, 3.0, b.attention_mask.bool(), True, 5,
                        t.tokenizer.pad_token_id)
    assert torch.equal(g.sequences, ref.sequences)
    assert max_logit_diff(g.logits, list(ref.logits)) <= 1e-5
    iv = Intervention.build(steer_layer, predictor=l2s.predict, source_layer=source_layer).validate(3, 64, 2)
    assert iv.needs_extra_prefill == (source_layer > steer_layer)


def test_l2s_gate_zeroes_short_predictions_and_leaves_those_rows_unsteered(llama, tmp_path):
    """gate: rows whose g(h) is shorter than gate x the mean non-zero target norm get exactly zero,
    so their generation equals the unsteered one; longer rows keep g(h) unchanged."""
    t, sm = llama
    g = torch.Generator().manual_seed(3)
    h = torch.randn(64, 64, generator=g)
    z = torch.randn(64, 64, generator=g) * 4
    z[::2] = 0  # half the targets say "leave unchanged"
    common = dict(hidden=8, epochs=3, lr=1e-2, progress=False)
    plain = L2S(LAYER, **common).fit_features(h, z)
    gated = L2S(LAYER, gate=0.5, **common).fit_features(h, z)
    nz = z.norm(dim=-1)
    assert gated.gate_norm_ == pytest.approx(0.5 * float(nz[nz > 0].mean()))
    q = torch.randn(40, 64, generator=g) * torch.linspace(0.01, 3, 40)[:, None]
    ref = plain.predict(q)
    gated.gate_norm_ = float(ref.norm(dim=-1).median())  # a threshold that splits these rows
    out = gated.predict(q)
    short = ref.norm(dim=-1) < gated.gate_norm_
    assert short.any() and (~short).any()
    assert torch.equal(out[short], torch.zeros_like(out[short]))
    assert torch.equal(out[~short], ref[~short])
    # the gate survives a save/load round trip
    gated.save_pretrained(tmp_path / "g")
    back = Steerer.from_pretrained(tmp_path / "g")
    assert back.gate_norm_ == gated.gate_norm_ and torch.equal(back.predict(q), out)
    # in a real trace: a gate above every prediction leaves the generation exactly unsteered
    l2s = L2S(LAYER, input_layer=LAYER, gate=0.9, **common).fit(sm, _items(8))
    l2s.gate_norm_ = float("inf")
    prompts = [it.prompt for it in _items(3)]
    assert torch.equal(l2s.generate_batch(sm, prompts, alpha=5.0, max_new_tokens=4).sequences,
                       NoSteer(LAYER).fit(sm, []).generate_batch(sm, prompts, max_new_tokens=4).sequences)


@pytest.mark.parametrize("gate", [-0.1, 1.0, "auto"])
def test_l2s_gate_out_of_range(gate):
    """Checked in fit (scikit-learn's rule: __init__ stores the hyperparameters as given)."""
    l2s = L2S(0, gate=gate)
    assert l2s.gate == gate
    with pytest.raises(DataError, match="gate must be in"):
        l2s.fit_features(torch.randn(4, 8), torch.randn(4, 8))


def test_l2s_inputs_equal_hidden_states_of_each_prompt_alone(llama):
    """L2S.inputs (length-bucketed, padded batches) equals output_hidden_states of each prompt run alone."""
    t, sm = llama
    items = _items(6)
    items[3] = ContrastiveItem(prompt="A much longer question " * 6, positive="x", negative="y", behavior="harmful")
    l2s = L2S(LAYER, input_layer=0, hidden=8, epochs=2, progress=False).fit(sm, items)
    h = l2s.inputs(sm, items, batch_size=4)
    for i, it in enumerate(items):
        b = sm.encode([it.prompt])
        with torch.no_grad():
            ref = t.model(**b.inputs, output_hidden_states=True).hidden_states[1][0, -1]
        assert torch.allclose(h[i], ref, atol=1e-5), i
    assert torch.allclose(l2s.vectors(sm, items), l2s.predict(h), atol=1e-6)  # other batches: rounding only


def test_stratified_folds_spread_every_label():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)
    fold = stratified_folds(labels, 3, seed=1)
    assert fold.shape == labels.shape and set(fold.tolist()) == {0, 1, 2}
    for c, n in ((0, 10), (1, 7), (2, 3)):
        counts = torch.bincount(fold[labels == c], minlength=3)
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert torch.equal(fold, stratified_folds(labels, 3, seed=1))


def test_l2s_gate_cv_matches_a_hand_computation(tmp_path):
    """gate='cv': per grid value, the held-out error rates equal those of g's trained by hand on each
    fold's complement; the chosen gate has the lowest balanced error; all of it survives save/load."""
    g = torch.Generator().manual_seed(5)
    n, d = 60, 16
    behaviors = ["benign"] * 30 + ["harmful"] * 30
    h = torch.randn(n, d, generator=g)
    h[30:] += 1.5  # the harmful inputs sit apart, noisily
    z = torch.zeros(n, d)
    z[30:] = torch.randn(d, generator=g) * 3 + torch.randn(30, d, generator=g) * 0.5
    common = dict(hidden=8, epochs=20, lr=1e-2, class_balance=True, progress=False, seed=2)
    l2s = L2S(LAYER, gate="cv", gate_folds=4, **common).fit_features(h, z, behaviors)

    fold = stratified_folds(torch.tensor([b == "harmful" for b in behaviors]).long(), 4, seed=2)
    zero = z.norm(dim=-1) == 0
    steered = torch.zeros(len(GATE_GRID))
    gated = torch.zeros(len(GATE_GRID))
    for f in range(4):
        held = fold == f
        net = L2S(LAYER, **common).fit_features(h[~held], z[~held], [b for b, m in zip(behaviors, held) if not m])
        norm = net.predict(h[held]).norm(dim=-1)
        ref = z[~held].norm(dim=-1)[~zero[~held]].mean()
        for j, gv in enumerate(GATE_GRID):
            steered[j] += int(((norm >= gv * ref) & zero[held]).sum())
            gated[j] += int(((norm < gv * ref) & ~zero[held]).sum())
    for j, row in enumerate(l2s.gate_cv_):
        assert row["gate"] == GATE_GRID[j]
        assert row["zero_target_steered"] == pytest.approx(float(steered[j]) / 30)
        assert row["nonzero_target_gated"] == pytest.approx(float(gated[j]) / 30)
        assert row["balanced_error"] == pytest.approx((float(steered[j]) + float(gated[j])) / 60)
    best = min(r["balanced_error"] for r in l2s.gate_cv_)
    assert l2s.gate_ == min(r["gate"] for r in l2s.gate_cv_ if r["balanced_error"] == pytest.approx(best))
    assert l2s.gate_norm_ == pytest.approx(l2s.gate_ * float(z[30:].norm(dim=-1).mean()))
    assert len({r["balanced_error"] for r in l2s.gate_cv_}) > 1  # the grid is not flat on this data

    l2s.save_pretrained(tmp_path / "cv")
    back = Steerer.from_pretrained(tmp_path / "cv")
    assert back.gate == "cv" and back.gate_ == l2s.gate_ and back.gate_cv_ == l2s.gate_cv_
    assert torch.equal(back.predict(h), l2s.predict(h))


def test_l2s_gate_cost_weights_the_cross_validated_error():
    """gate_cost=c: the same held-out rates as gate_cost=1, the error (c*a + b)/(c + 1), the gate its
    argmin (ties to the lower gate); a higher cost never picks a lower gate on the same rates."""
    g = torch.Generator().manual_seed(7)
    n, d = 60, 16
    behaviors = ["benign"] * 30 + ["harmful"] * 30
    h = torch.randn(n, d, generator=g)
    h[30:] += 0.8  # overlapping classes: the grid trades one error for the other
    z = torch.zeros(n, d)
    z[30:] = torch.randn(d, generator=g) * 3 + torch.randn(30, d, generator=g) * 0.5
    common = dict(hidden=8, epochs=20, lr=1e-2, class_balance=True, progress=False, seed=2, gate="cv", gate_folds=4)
    one = L2S(LAYER, **common).fit_features(h, z, behaviors)
    picks = [one.gate_]
    for cost in (3.0, 50.0):
        c = L2S(LAYER, gate_cost=cost, **common).fit_features(h, z, behaviors)
        for r1, rc in zip(one.gate_cv_, c.gate_cv_, strict=True):
            assert (rc["zero_target_steered"], rc["nonzero_target_gated"]) == (r1["zero_target_steered"], r1["nonzero_target_gated"])
            assert rc["error"] == pytest.approx((cost * rc["zero_target_steered"] + rc["nonzero_target_gated"]) / (cost + 1))
        best = min(round(r["error"], 9) for r in c.gate_cv_)
        assert c.gate_ == min(r["gate"] for r in c.gate_cv_ if round(r["error"], 9) == best)
        picks.append(c.gate_)
    assert picks == sorted(picks)
    assert one.gate_cv_[0]["error"] == pytest.approx(one.gate_cv_[0]["balanced_error"])
    with pytest.raises(DataError, match="gate_cost"):
        L2S(LAYER, gate_cost=0.0, **common).fit_features(h, z, behaviors)


def test_l2s_gate_cv_needs_both_kinds_of_target():
    h = torch.randn(12, 8)
    with pytest.raises(DataError, match="zero targets"):
        L2S(LAYER, gate="cv", epochs=1, progress=False).fit_features(h, torch.randn(12, 8))
    with pytest.raises(DataError, match="gate_folds"):
        L2S(LAYER, gate="cv", gate_folds=1).fit_features(h, torch.randn(12, 8))


def test_l2s_input_position_without_generation_prompt(llama):
    t, sm = llama
    l2s = L2S(1, input_layer=1, input_position="last_prompt_no_gen", hidden=4, epochs=2, progress=False)
    l2s.fit(sm, _items(6))
    prompt = "Tell me a story"
    bare = sm.adapter.render(sm.processor, prompt, add_generation_prompt=False)
    ids = t.tokenizer(bare, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        h = t.model(input_ids=ids, output_hidden_states=True).hidden_states[2][:, -1]
    assert torch.allclose(l2s.vectors(sm, [prompt]), l2s.predict(h), atol=1e-5)


def _fitted(sm, method):
    items = _items(8)
    kw = dict(hidden=4, epochs=2) if method == "l2s" else {}
    if method != "none" and method != "prompt":
        kw["progress"] = False
    return METHODS[method](LAYER, alpha=1.5, **kw).fit(sm, items)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"static"}))  # static: tests/test_export.py
def test_save_load_round_trip(llama, method, tmp_path):
    t, sm = llama
    st = _fitted(sm, method)
    st.save_pretrained(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["README.md", "steerer.json", "steerer.safetensors"]
    back = Steerer.from_pretrained(tmp_path / "s", model=sm)
    assert type(back) is type(st) and back.get_params() == st.get_params()
    items = [it for it in _items(4) if it.positive != it.negative]
    assert torch.equal(back.vectors(sm, items), st.vectors(sm, items))
    assert back.generate(sm, items[:2], max_new_tokens=3) == st.generate(sm, items[:2], max_new_tokens=3)
    for name in st._tensors:
        assert torch.equal(getattr(back, name), getattr(st, name))


def test_save_refuses_to_overwrite_and_load_refuses_pickle(llama, tmp_path):
    t, sm = llama
    st = _fitted(sm, "mean")
    st.save_pretrained(tmp_path / "s")
    with pytest.raises(PersistenceError, match="overwrite=True"):
        st.save_pretrained(tmp_path / "s")
    st.save_pretrained(tmp_path / "s", overwrite=True)
    torch.save({"x": 1}, tmp_path / "evil.pt")
    with pytest.raises(PersistenceError, match="pickle"):
        Steerer.from_pretrained(tmp_path / "evil.pt")


def test_load_into_a_different_model_fails(llama, tmp_path):
    t, sm = llama
    _fitted(sm, "mean").save_pretrained(tmp_path / "s")
    other = build_tiny("qwen2")
    with pytest.raises(CompatibilityError, match="model_type|Model-type"):
        Steerer.from_pretrained(tmp_path / "s", model=SteerableModel(other.model, other.processor))


def test_unfitted_steerer_errors(llama):
    t, sm = llama
    with pytest.raises(NotFittedError, match="fit"):
        MeanSteer(LAYER).generate(sm, ["hi"])
    with pytest.raises(NotFittedError):
        L2S(LAYER).vectors(sm, ["hi"])


def test_prompt_baseline_edits_prompt_only(llama):
    t, sm = llama
    ps = PromptSteer(LAYER, instruction=" Be careful.").fit(sm, [])
    out = ps.generate(sm, ["hello"], max_new_tokens=3)
    ref = NoSteer(LAYER).fit(sm, []).generate(sm, ["hello Be careful."], max_new_tokens=3)
    assert out == ref


def test_fit_from_shared_p2s_features_equals_fit(llama):
    t, sm = llama
    items = _items(8)
    feats = extract_p2s(sm, items, LAYER, input_layer=0, progress=False)
    a = MeanSteer(LAYER, behaviors=["harmful"], progress=False).fit(sm, items)
    b = MeanSteer(LAYER, behaviors=["harmful"], progress=False).fit_from_p2s(sm, items, feats.z)
    assert torch.equal(a.vector_, b.vector_) and a.items_hash_ == b.items_hash_
    kw = dict(input_layer=0, hidden=4, epochs=3, progress=False)
    la = L2S(LAYER, **kw).fit(sm, items)
    lb = L2S(LAYER, **kw).fit_from_p2s(sm, items, feats.z, feats.h)
    assert torch.equal(la.decoder_weight_, lb.decoder_weight_)


def test_p2s_shards_on_disk_equal_in_memory_and_resume(llama, tmp_path):
    from steerlib.steerers.extract import extract_p2s_to_disk, load_p2s

    t, sm = llama
    items = _items(7)
    mem = extract_p2s(sm, items, LAYER, input_layer=0, progress=False)
    extract_p2s_to_disk(sm, items, LAYER, tmp_path / "f", shard_size=3, input_layer=0, progress=False)
    back = load_p2s(tmp_path / "f")
    assert torch.allclose(back.z, mem.z, atol=1e-6) and torch.allclose(back.h, mem.h, atol=1e-6)
    stamp = (tmp_path / "f" / "p2s-00000.safetensors").stat().st_mtime_ns
    extract_p2s_to_disk(sm, items, LAYER, tmp_path / "f", shard_size=3, input_layer=0, progress=False)
    assert (tmp_path / "f" / "p2s-00000.safetensors").stat().st_mtime_ns == stamp  # kept, not recomputed


def test_multi_layer_extraction_equals_single_layer(llama):
    from steerlib.steerers import extract_p2s_layers

    t, sm = llama
    items = _items(5)
    many = extract_p2s_layers(sm, items, [0, 1], input_layers={0: 0, 1: 1}, progress=False)
    for layer in (0, 1):
        one = extract_p2s(sm, items, layer, input_layer=layer, progress=False)
        assert torch.allclose(many[layer].z, one.z, atol=1e-6) and torch.allclose(many[layer].h, one.h, atol=1e-6)
