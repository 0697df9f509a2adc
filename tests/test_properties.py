"""Property-based tests (hypothesis) on tiny models.

Examples run per property (``max_examples``, all ``derandomize=True`` so every run draws the same
examples; the ``N_*`` constants below are the single source of these numbers):

=================================================  ======================
property                                           examples
=================================================  ======================
position masks vs hand computation (synthetic)     N_MASKS = 500
position masks of real encodings (tiny llama)      N_MASKS_ENCODED = 60
batch invariance, tiny llama                       N_BATCH_LLAMA = 40
batch invariance, tiny llava                       N_BATCH_LLAVA = 25
save/load round trip, random steerer configs       N_ROUND_TRIP = 60
determinism: P2S (sampled_mean) + NormRandom       N_DETERMINISM = 15
determinism: L2S g weights                         N_DETERMINISM = 15
=================================================  ======================

Models are built once per module. Each example of batch invariance generates the batch and each
row alone; rows must agree in tokens and within 1e-4 in logits.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reference import max_logit_diff
from steerlib import POSITION_NAMES, ContrastiveItem, Intervention, Positions, SteerableModel
from steerlib.engine import Batch
from steerlib.steerers import METHODS, L2S, P2S, NormRandom, Steerer
from steerlib.testing import build_tiny, tiny_image

N_MASKS = 500
N_MASKS_ENCODED = 60
N_BATCH_LLAMA = 40
N_BATCH_LLAVA = 25
N_ROUND_TRIP = 60
N_DETERMINISM = 15
#: property name -> examples, for reports
EXAMPLES = {
    "position_masks_synthetic": N_MASKS,
    "position_masks_encoded": N_MASKS_ENCODED,
    "batch_invariance_llama": N_BATCH_LLAMA,
    "batch_invariance_llava": N_BATCH_LLAVA,
    "save_load_round_trip": N_ROUND_TRIP,
    "determinism_p2s_norm_random": N_DETERMINISM,
    "determinism_l2s": N_DETERMINISM,
}


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on shared cores spinning threads can
    slow every forward several-fold; run this module single-threaded, then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def llama():
    t = build_tiny("llama")
    return t, SteerableModel(t.model, t.processor)


@pytest.fixture(scope="module")
def llava():
    t = build_tiny("llava")
    return t, SteerableModel(t.model, t.processor)


POOL = [
    "Hi",
    "Describe the picture.",
    "What colour is the thing in this image, and why is it there at all?",
    "Is there a cat?",
    "Tell me a long story about a dragon who lived under a bridge and collected old keys.",
    "ok",
]
ITEMS = [
    ContrastiveItem(prompt=f"Question {i} about the {'cat' if i % 2 else 'weather'} today",
                    positive="I cannot help with that." if i % 2 else "Sure, it is sunny.",
                    negative="Sure, here is how." if i % 2 else "I refuse.",
                    behavior=("harmful", "benign")[i % 2])
    for i in range(4)
]


# --------------------------------------------------------------------------------------------
# Position masks
# --------------------------------------------------------------------------------------------

def _hand_mask(name: str, S: int, real_len: int, comp_len: int, img: list[bool]) -> list[bool]:
    """One row of the mask, position by position, from the row's layout (left padding)."""
    first_real = S - real_len
    last_prompt = S - 1 - comp_len
    out = []
    for j in range(S):
        real = j >= first_real
        out.append({
            "all": real,
            "prompt": real and j <= last_prompt,
            "generated": real and j > last_prompt,
            "last_prompt": j == last_prompt,
            "image": real and img[j],
            "text": real and not img[j],
        }[name])
    return out


@st.composite
def layouts(draw):
    """A left-padded batch: per row a prompt length >= 1, a completion length >= 0, image tokens."""
    B = draw(st.integers(1, 5))
    rows = [(draw(st.integers(1, 12)), draw(st.integers(0, 6))) for _ in range(B)]
    S = max(p + c for p, c in rows) + draw(st.integers(0, 3))  # extra all-pad columns allowed
    imgs = []
    for p, c in rows:
        first = S - p - c
        imgs.append([first <= j < first + p and draw(st.booleans()) for j in range(S)])
    return S, rows, imgs


@_settings(N_MASKS)
@given(layout=layouts(), trailer=st.integers(0, 3))
def test_position_masks_match_hand_computation(layout, trailer):
    S, rows, imgs = layout
    am = torch.tensor([[int(j >= S - p - c) for j in range(S)] for p, c in rows])
    comp = torch.tensor([c for _, c in rows])
    last = S - 1 - comp
    image_mask = torch.tensor(imgs, dtype=torch.bool)
    for name in POSITION_NAMES:
        got = Positions(name).prompt_mask(am, last, image_mask)
        want = torch.tensor([_hand_mask(name, S, p + c, c, imgs[i]) for i, (p, c) in enumerate(rows)])
        assert torch.equal(got, want), name
    # the Batch bookkeeping agrees: last prompt index, prompt and completion masks
    trail = torch.minimum(comp, torch.tensor(trailer))
    b = Batch(inputs={"input_ids": torch.zeros(len(rows), S, dtype=torch.long), "attention_mask": am},
              image_mask=image_mask, completion_len=comp, trailer_len=trail,
              gen_prompt_len=torch.zeros(len(rows), dtype=torch.long))
    assert torch.equal(b.last_prompt_index, last)
    assert torch.equal(b.prompt_mask(), Positions("prompt").prompt_mask(am, last))
    want_comp = torch.tensor([[S - 1 - c < j <= S - 1 - int(trail[i]) for j in range(S)]
                              for i, (_, c) in enumerate(rows)])
    assert torch.equal(b.completion_mask(), want_comp)
    assert Positions("all").steers_generated and not Positions("prompt").steers_generated


_prompt_text = st.text(alphabet=st.characters(codec="ascii", categories=("L", "N", "P", "Zs")), min_size=1, max_size=40)


@_settings(N_MASKS_ENCODED)
@given(rows=st.lists(st.tuples(_prompt_text, st.one_of(st.none(), _prompt_text)), min_size=1, max_size=4))
def test_position_masks_of_real_encodings(llama, rows):
    """Encode a random batch (random prompt lengths, some rows with a forced completion): each row's
    masks equal the hand computation from that row encoded alone."""
    _, sm = llama
    prompts = [p for p, _ in rows]
    if all(c is None for _, c in rows):
        comps = None
    else:
        comps = [c or "x" for _, c in rows]  # a batch either forces completions in every row or in none
    b = sm.encode(prompts, completions=comps)
    S = b.seq_len
    for i in range(len(rows)):
        alone = sm.encode([prompts[i]], completions=[comps[i]] if comps else None)
        plain = sm.encode([prompts[i]])
        n, p = alone.seq_len, plain.seq_len
        assert torch.equal(b.input_ids[i, S - n:], alone.input_ids[0])  # left padding, same tokens
        assert int(b.attention_mask[i].sum()) == n
        for name in ("all", "prompt", "generated", "last_prompt", "text"):
            got = Positions(name).prompt_mask(b.attention_mask, b.last_prompt_index, b.image_mask)[i].tolist()
            assert got == _hand_mask(name, S, n, n - p, [False] * S), (name, i)


# --------------------------------------------------------------------------------------------
# Batch invariance
# --------------------------------------------------------------------------------------------

def _check_batch_invariance(sm: SteerableModel, prompts, images, V, alpha, positions, n_new=3):
    event(f"positions={positions}")
    event(f"batch={len(prompts)}")
    b = sm.encode(prompts, images)
    both = sm.generate(b, Intervention.build(1, V, alpha=alpha, positions=positions), max_new_tokens=n_new,
                       output_logits=True)
    pad = sm.tokenizer.pad_token_id
    for i in range(len(prompts)):
        bi = sm.encode(prompts[i:i + 1], images[i:i + 1] if images else None)
        alone = sm.generate(bi, Intervention.build(1, V[i:i + 1], alpha=alpha, positions=positions),
                            max_new_tokens=n_new, output_logits=True)
        k = alone.new_tokens.shape[1]  # alone may stop early at EOS
        assert torch.equal(alone.new_tokens[0], both.new_tokens[i, :k]), i
        assert bool((both.new_tokens[i, k:] == pad).all()), i  # the batched row is finished, only pads follow
        diff = max_logit_diff([x[0:1] for x in alone.logits], [x[i:i + 1] for x in both.logits[:k]])
        assert diff <= 1e-4, (i, diff)


@st.composite
def compositions(draw, image_positions: bool):
    idx = draw(st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=3))  # random subset, order, repeats
    seed = draw(st.integers(0, 2**16))
    alpha = draw(st.floats(-4, 4, allow_nan=False))
    names = [n for n in POSITION_NAMES if image_positions or n != "image"]
    return idx, seed, alpha, draw(st.sampled_from(names))


@_settings(N_BATCH_LLAMA)
@given(case=compositions(image_positions=False))
def test_batch_invariance_llama(llama, case):
    _, sm = llama
    idx, seed, alpha, positions = case
    V = 2.0 * torch.randn(len(idx), sm.hidden_size, generator=torch.Generator().manual_seed(seed))
    _check_batch_invariance(sm, [POOL[i] for i in idx], None, V, alpha, positions)


@_settings(N_BATCH_LLAVA)
@given(case=compositions(image_positions=True), with_images=st.booleans())
def test_batch_invariance_llava(llava, case, with_images):
    _, sm = llava
    idx, seed, alpha, positions = case
    if positions == "image" and not with_images:
        positions = "text"
    V = 2.0 * torch.randn(len(idx), sm.hidden_size, generator=torch.Generator().manual_seed(seed))
    images = [[tiny_image(i)] for i in idx] if with_images else None
    _check_batch_invariance(sm, [POOL[i] for i in idx], images, V, alpha, positions)


# --------------------------------------------------------------------------------------------
# Save / load round trip
# --------------------------------------------------------------------------------------------

_finite = st.floats(allow_nan=False, allow_infinity=False)
_small = st.floats(0, 2, allow_nan=False)


@st.composite
def steerer_configs(draw):
    method = draw(st.sampled_from(sorted(METHODS)))
    kw = dict(layer=draw(st.integers(0, 2)), alpha=draw(_finite), positions=draw(st.sampled_from(POSITION_NAMES)))
    if method == "static":  # fixed vectors (a control vector): built from vectors, not fitted
        layers = draw(st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True))
        return method, dict(layers=layers, alpha=kw["alpha"], positions=kw["positions"],
                            seed=draw(st.integers(0, 2**16)), model_hint=draw(st.text(max_size=10)))
    if method == "prompt":
        kw.update(instruction=draw(st.text(max_size=30)), where=draw(st.sampled_from(["prefix", "suffix"])))
    if method in ("norm_random", "mean", "mean_ba", "p2s", "l2s"):
        kw.update(reduction=draw(st.sampled_from(["last", "completion_mean", "sampled_mean"])),
                  continuation_tokens=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**31 - 1)),
                  batch_size=draw(st.integers(1, 8)), progress=False)
        if method in ("mean", "l2s"):
            kw["equalize_norms_to"] = draw(st.sampled_from([None, "harmful", "benign"]))
    if method in ("mean", "mean_ba"):
        kw["behaviors"] = draw(st.sampled_from([None, ["harmful"], ["benign"], ["benign", "harmful"]]))
    if method == "mean_ba":
        kw.update(positive=draw(st.text(min_size=1, max_size=10)), negative=draw(st.text(min_size=1, max_size=10)),
                  prompt_suffix=draw(st.text(max_size=20)))
    if method == "l2s":
        kw.update(input_layer=draw(st.sampled_from([None, 0, 1, 2])),
                  input_position=draw(st.sampled_from(["last_prompt", "last_prompt_no_gen"])),
                  hidden=draw(st.integers(1, 6)), init=draw(st.sampled_from(["svd", "random"])),
                  epochs=draw(st.integers(1, 3)), lr=draw(st.floats(1e-5, 1e-1)),
                  train_batch_size=draw(st.integers(1, 8)), l1_weight=draw(_small), cos_weight=draw(_small),
                  cos_warmup_epochs=draw(st.integers(0, 2)), val_cos_weight=draw(_small),
                  class_balance=draw(st.booleans()), val_fraction=draw(st.sampled_from([0.0, 0.25, 0.5])),
                  keep_best=draw(st.booleans()), scheduler=draw(st.sampled_from(["none", "cosine"])),
                  warmup_epochs=draw(st.integers(0, 2)))
    return method, kw


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@_settings(N_ROUND_TRIP)
@given(config=steerer_configs())
def test_save_load_round_trip_is_bit_exact(llama, tmp_path_factory, config):
    _, sm = llama
    method, kw = config
    event(f"method={method}")
    if method == "static":
        g = torch.Generator().manual_seed(kw.pop("seed"))
        vecs = {layer: torch.randn(sm.hidden_size, generator=g) for layer in kw.pop("layers")}
        st_ = METHODS[method].from_vectors(sm, vecs, **kw)
    else:
        st_ = METHODS[method](**kw).fit(sm, ITEMS)
    d = tmp_path_factory.mktemp("rt")
    st_.save_pretrained(d / "a")
    back = Steerer.from_pretrained(d / "a", model=sm)
    assert type(back) is type(st_)
    assert back.get_params() == st_.get_params()
    assert (back.model_info_, back.n_items_, back.items_hash_) == (st_.model_info_, st_.n_items_, st_.items_hash_)
    for name in st_._tensors:
        a, b = getattr(st_, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    back.save_pretrained(d / "b")
    assert _files(d / "a") == _files(d / "b")  # saving the loaded steerer writes the same bytes
    if method == "l2s":
        h = torch.randn(3, sm.hidden_size, generator=torch.Generator().manual_seed(0))
        assert torch.equal(back.predict(h), st_.predict(h))
    elif method == "static":
        assert all(torch.equal(a, b) for a, b in zip(back.as_dict().values(), st_.as_dict().values()))
    elif method in ("mean", "mean_ba", "none"):
        assert torch.equal(back.vectors(sm, ITEMS[:2]), st_.vectors(sm, ITEMS[:2]))


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------

def _scramble_global_rng(junk: int) -> None:
    torch.manual_seed(junk)
    torch.rand(junk % 7 + 1)


@_settings(N_DETERMINISM)
@given(seed=st.integers(0, 2**31 - 1), junk=st.integers(0, 2**16), layer=st.integers(0, 2))
def test_same_seed_same_p2s_and_norm_random_vectors(llama, seed, junk, layer):
    _, sm = llama
    kw = dict(reduction="sampled_mean", continuation_tokens=3, seed=seed, progress=False)
    runs = []
    for j in (junk, junk + 1):  # the global RNG state must not matter
        _scramble_global_rng(j)
        runs.append((P2S(layer, **kw).fit(sm, []).vectors(sm, ITEMS), NormRandom(layer, **kw).fit(sm, []).vectors(sm, ITEMS)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])
    other = NormRandom(layer, **{**kw, "seed": seed + 1}).fit(sm, []).vectors(sm, ITEMS)
    assert not torch.equal(other, runs[0][1])  # another seed, other directions


@_settings(N_DETERMINISM)
@given(seed=st.integers(0, 2**31 - 1), junk=st.integers(0, 2**16), class_balance=st.booleans(),
       init=st.sampled_from(["svd", "random"]))
def test_same_seed_same_l2s_g(llama, seed, junk, class_balance, init):
    _, sm = llama
    kw = dict(input_layer=0, hidden=4, epochs=2, lr=1e-2, train_batch_size=2, val_fraction=0.25, seed=seed,
              class_balance=class_balance, init=init, reduction="sampled_mean", continuation_tokens=2, progress=False)
    fits = []
    for j in (junk, junk + 1):
        _scramble_global_rng(j)
        fits.append(L2S(1, **kw).fit(sm, ITEMS))
    for name in L2S._tensors:
        assert torch.equal(getattr(fits[0], name), getattr(fits[1], name)), name
    assert [r["train_loss"] for r in fits[0].history_] == [r["train_loss"] for r in fits[1].history_]
