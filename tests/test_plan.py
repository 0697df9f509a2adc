"""One plan for every entry point: predictor interventions work in ``forward`` and
``read(intervention=)`` (not only in ``generate``) whatever the predictor's source layer L' is
relative to the steered layer L*, on every family and both backends; plus the vocabularies,
``Batch.index`` and the planning function itself.

The reference is two passes with raw PyTorch hooks: read the state at L' on the unsteered model,
apply the predictor, then add ``alpha * v`` at L* with a forward hook.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings

import pytest
import torch

from reference import hook_generate, hooked_forward, max_logit_diff
from steerlib import Intervention, SteerableModel
from steerlib.encoding import Batch, ChatEncoder
from steerlib.engine import BACKENDS, READ_REDUCTIONS, Plan, _plan
from steerlib.errors import PositionError
from steerlib.intervention import SOURCE_POSITIONS
from steerlib.positions import (
    P2S_REDUCTIONS,
    POSITION_NAMES,
    TOKEN_POSITIONS,
    P2SReduction,
    Reduce,
    SourcePosition,
    TokenPosition,
    Where,
    as_reduce,
)
from steerlib.testing import FAMILIES, build_tiny, tiny_image

PROMPTS = ["Describe the picture.", "What colour is the thing in this image, and why is it there?"]
STEER = 1
ALPHA = 1.5
# (L*, L'): source below, at and above the steered layer (the last one needs an extra prefill)
CASES = [(STEER, 0), (STEER, STEER), (STEER, STEER + 1)]


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request):
    t = build_tiny(request.param)
    images = [[tiny_image(1)], [tiny_image(2)]] if t.is_vlm else None
    models = {backend: SteerableModel(t.model, t.processor, backend=backend) for backend in BACKENDS}
    return t, models, images


def _predictor(d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = 3.0 * torch.randn(d, d, generator=g) / d ** 0.5
    c = torch.randn(d, generator=g)
    return lambda h: h @ w.to(h.device, h.dtype).T + c.to(h.device, h.dtype)


def _reference(t, sm: SteerableModel, b: Batch, steer: int, source: int, predictor, position: str = "last_prompt"):
    """Two passes with raw hooks: unsteered state at L' -> predictor -> steered forward at L*."""
    modules = list(sm.adapter.layers(t.model))
    _, plain = hooked_forward(t.model, modules, b.inputs, sm.adapter.pass_position_ids)
    pos = b.last_prompt_index if position == "last_prompt" else b.last_prompt_index - b.gen_prompt_len
    v = predictor(plain[source][torch.arange(b.size), pos])
    out, steered = hooked_forward(t.model, modules, b.inputs, sm.adapter.pass_position_ids, steer_at=steer,
                                  vectors=v, alpha=ALPHA, mask=b.attention_mask.bool())
    return out.logits, steered, plain, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("steer", "source"), CASES)
def test_forward_with_a_predictor_equals_the_two_pass_reference(fam, backend, steer, source):
    t, models, images = fam
    sm = models[backend]
    b = sm.encode(PROMPTS, images)
    g = _predictor(sm.hidden_size)
    iv = Intervention.build(steer, predictor=g, source_layer=source, alpha=ALPHA)
    got = sm.forward(b, iv)
    ref, _, _, _ = _reference(t, sm, b, steer, source, g)
    real = b.attention_mask.bool()
    assert max_logit_diff([got[real]], [ref[real]]) <= 1e-4
    plain = sm.forward(b)
    assert float((plain[real] - got[real]).abs().max()) > 1e-3  # steering did something


@pytest.mark.parametrize(("steer", "source"), CASES)
def test_read_with_a_predictor_equals_the_two_pass_reference(fam, steer, source):
    t, models, images = fam
    sm = models["nnsight"]
    b = sm.encode(PROMPTS, images)
    g = _predictor(sm.hidden_size, seed=1)
    iv = Intervention.build(steer, predictor=g, source_layer=source, alpha=ALPHA)
    layers = list(range(sm.num_layers))
    got = sm.read(b, layers, reduce="per_token", intervention=iv)
    last = sm.read(b, layers, reduce="last_prompt", intervention=iv)
    _, steered, plain, _ = _reference(t, sm, b, steer, source, g)
    real = b.attention_mask.bool()
    rows = torch.arange(b.size)
    for layer in layers:
        assert torch.allclose(got[layer][real], steered[layer][real], atol=1e-4), layer
        assert torch.allclose(last[layer], steered[layer][rows, b.last_prompt_index], atol=1e-4), layer
    assert float((plain[steer][real] - got[steer][real]).abs().max()) > 1e-3  # steering did something
    if steer > 0:
        assert torch.allclose(got[steer - 1][real], plain[steer - 1][real], atol=1e-5)  # below L*: untouched


@pytest.mark.parametrize(("steer", "source"), CASES)
def test_generate_with_a_predictor_equals_the_two_pass_reference(fam, steer, source):
    t, models, images = fam
    sm = models["nnsight"]
    b = sm.encode(PROMPTS, images)
    g = _predictor(sm.hidden_size, seed=2)
    got = sm.generate(b, Intervention.build(steer, predictor=g, source_layer=source, alpha=ALPHA),
                      max_new_tokens=3, output_logits=True)
    _, _, _, v = _reference(t, sm, b, steer, source, g)
    tok = sm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ref = hook_generate(t.model, sm.adapter.layers(t.model)[steer], b.inputs, v, ALPHA, b.attention_mask.bool(),
                        True, 3, pad)
    assert torch.equal(got.sequences, ref.sequences)
    assert max_logit_diff(got.logits, list(ref.logits)) <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("source", [0, 2])
def test_predictor_reading_the_last_token_before_the_generation_prompt(backend, source):
    t = build_tiny("llama")
    sm = SteerableModel(t.model, t.processor, backend=backend)
    b = sm.encode(PROMPTS)
    assert bool((b.gen_prompt_len > 0).all())
    g = _predictor(sm.hidden_size, seed=3)
    iv = Intervention.build(STEER, predictor=g, source_layer=source, source_position="last_prompt_no_gen", alpha=ALPHA)
    ref, _, _, _ = _reference(t, sm, b, STEER, source, g, position="last_prompt_no_gen")
    assert torch.allclose(sm.forward(b, iv), ref, atol=1e-4)


# ------------------------------------------------------------------------ the plan ----
def test_plan_visits_layers_in_increasing_order_and_decides_the_extra_prefill():
    g = _predictor(4)
    in_pass = Intervention.build([2, 1], predictor=g, source_layer=0).validate(4, 4, 1)
    assert _plan(in_pass, reads=[3]) == Plan(order=(0, 1, 2, 3), needs_prefill=False)
    at = Intervention.build(1, predictor=g, source_layer=1).validate(4, 4, 1)
    assert _plan(at) == Plan(order=(1,), needs_prefill=False)
    above = Intervention.build(1, predictor=g, source_layer=3).validate(4, 4, 1)
    assert _plan(above, reads=[0]) == Plan(order=(0, 1), needs_prefill=True)  # the prefill predicts, not the pass
    vectors = Intervention.build([3, 0], torch.ones(4)).validate(4, 4, 1)
    assert _plan(vectors, reads=(2, 2)) == Plan(order=(0, 2, 3), needs_prefill=False)
    assert _plan(None, reads=[2, 0]) == Plan(order=(0, 2), needs_prefill=False)
    assert _plan(None) == Plan(order=(), needs_prefill=False)


def test_backend_is_an_object_chosen_once_and_the_name_is_kept():
    t = build_tiny("llama")
    for name in BACKENDS:
        sm = SteerableModel(t.model, t.processor, backend=name)
        assert sm.backend == name and sm._backend.name == name
        assert callable(sm._backend.run)
        assert not hasattr(sm, "output_is_tuple")


# ---------------------------------------------------------------------- vocabulary ----
def test_literal_aliases_match_their_tuples():
    from typing import get_args

    import steerlib.engine as engine
    import steerlib.intervention as intervention

    assert get_args(Where) == POSITION_NAMES == ("all", "prompt", "generated", "last_prompt", "image", "text")
    assert get_args(Reduce) == READ_REDUCTIONS == engine.READ_REDUCTIONS
    assert get_args(SourcePosition) == SOURCE_POSITIONS == intervention.SOURCE_POSITIONS
    assert get_args(P2SReduction) == P2S_REDUCTIONS == ("end_of_turn", "completion_mean", "sampled_mean")
    assert get_args(TokenPosition) == TOKEN_POSITIONS
    assert set(SOURCE_POSITIONS) <= set(TOKEN_POSITIONS) <= set(READ_REDUCTIONS)
    # each word means one thing: no read reduction is also a steering position, except the
    # last prompt token, which is the same token in both
    assert set(READ_REDUCTIONS) & set(POSITION_NAMES) == {"last_prompt"}
    assert not set(READ_REDUCTIONS) & (set(P2S_REDUCTIONS) - {"completion_mean"})


@pytest.mark.parametrize(("old", "new"), [("all", "per_token"), ("last", "last_token")])
def test_old_read_reduction_spellings_still_work_with_a_deprecation_warning(old, new):
    t = build_tiny("llama")
    sm = SteerableModel(t.model, t.processor)
    b = sm.encode(PROMPTS, completions=["Yes.", "No, it is not."], close_turn=True)
    with pytest.warns(DeprecationWarning, match=f"reduce='{old}' is deprecated.*Use reduce='{new}'") as rec:
        via_read = sm.read(b, [0, 1], reduce=old)  # type: ignore[arg-type]
    assert rec[0].filename == __file__  # the warning points at the caller
    with pytest.warns(DeprecationWarning, match=f"reduce='{old}'"):
        via_many = sm.read_many(b, [(1, old), (1, new)])  # type: ignore[list-item]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        now = sm.read(b, [0, 1], reduce=new)  # the new spelling does not warn
    for layer in (0, 1):
        assert torch.equal(via_read[layer], now[layer])
    assert torch.equal(via_many[(1, old)], via_many[(1, new)])  # keyed as requested
    if new == "last_token":
        assert now[1].shape == (2, sm.hidden_size)
        full = sm.read(b, [1], reduce="per_token")[1]
        assert torch.equal(now[1], full[:, -1])
    else:
        assert now[1].shape == (2, b.seq_len, sm.hidden_size)


def test_as_reduce_names_the_choices():
    assert as_reduce("completion_mean") == "completion_mean"
    with pytest.raises(PositionError, match="Unknown reduction 'middle'; use one of last_prompt, "):
        as_reduce("middle")
    with pytest.raises(PositionError, match="Unknown reduction None"):
        as_reduce(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- Batch.index ----
def test_batch_index_finds_one_token_per_row():
    t = build_tiny("llama")
    sm = SteerableModel(t.model, t.processor)
    plain = sm.encode(PROMPTS)
    forced = sm.encode(PROMPTS, completions=["Sure.", "No, it is not there."])
    for b in (plain, forced):
        rows = torch.arange(b.size)
        assert torch.equal(b.index("last_prompt"), b.last_prompt_index)
        assert torch.equal(b.index("last_prompt_no_gen"), b.last_prompt_no_gen_index)
        assert torch.equal(b.index("last_token"), torch.full((2,), b.seq_len - 1))
        assert bool((b.index("last_prompt_no_gen") < b.index("last_prompt")).all())
        # the last prompt token is the plain prompt's last token, whatever was forced after it
        assert torch.equal(b.input_ids[rows, b.index("last_prompt")], plain.input_ids[:, -1])
    assert torch.equal(forced.index("last_prompt"), forced.seq_len - 1 - forced.completion_len)
    with pytest.raises(PositionError, match="Unknown token position 'first'; use one of last_prompt, "):
        plain.index("first")  # type: ignore[arg-type]
    broken = Batch(inputs=plain.inputs, image_mask=plain.image_mask, completion_len=plain.completion_len,
                   trailer_len=plain.trailer_len, gen_prompt_len=torch.tensor([-1, 3]))
    with pytest.raises(PositionError, match="'last_prompt_no_gen' is undefined; use 'last_prompt'"):
        broken.index("last_prompt_no_gen")
    with pytest.raises(PositionError, match="'last_prompt_no_gen' is undefined"):
        _ = broken.last_prompt_no_gen_index


def test_encoding_lives_outside_the_engine():
    import ast
    import inspect

    import steerlib.encoding as encoding
    from steerlib.engine import Batch as EngineBatch

    assert EngineBatch is Batch
    tree = ast.parse(inspect.getsource(encoding))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and "engine" in m for m in imported)
    t = build_tiny("llava")
    sm = SteerableModel(t.model, t.processor, system_prompt="Be brief.")
    enc = ChatEncoder(sm.adapter, t.processor, tuple(sm.image_token_ids), type(t.model).__name__)
    images = [[tiny_image(1)], [tiny_image(2)]]
    a, b = sm.encode(PROMPTS, images), enc.encode(PROMPTS, images, system="Be brief.")
    assert a.texts == b.texts and torch.equal(a.input_ids, b.input_ids) and torch.equal(a.image_mask, b.image_mask)
    assert sm.prompt_lengths(PROMPTS, [1, 1]) == enc.prompt_lengths(PROMPTS, [1, 1], system="Be brief.")
