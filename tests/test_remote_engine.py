"""Remote steering through nnsight, offline: every pass with ``remote="local"`` (the request is
serialized as for NDIF, deserialized with steerlib hidden, and run on the deserialized copies)
must equal the same pass run locally -- greedy tokens identical, logits and reads within 1e-5 --
for every built-in family, every position mode, P2S / Mean-S / L2S (both placements of g)."""

from __future__ import annotations

import contextlib
import copy
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import steerlib.remote as remote_mod
from steerlib import ContrastiveItem, Intervention, SteerableModel
from steerlib.errors import InputError, SteerlibError
from steerlib.remote import RemoteEnvironmentError, RemoteError, StrictLocalSimulation
from steerlib.zoo import remote_steerable
from steerlib.steerers import L2S, MeanSteer, extract_p2s
from steerlib.testing import FAMILIES, VLM_FAMILIES, build_tiny, tiny_image

TOL = 1e-5
PROMPTS = ["Hello there friend, how are you doing today?", "Hi"]  # different lengths: a left-padded row


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


_BUILT: dict[str, tuple] = {}


def pair(family: str) -> tuple[SteerableModel, SteerableModel]:
    """The same tiny model, steered locally and through the local remote simulation."""
    if family not in _BUILT:
        t = build_tiny(family)
        _BUILT[family] = (SteerableModel(t.model, t.processor), SteerableModel(t.model, t.processor, remote="local"))
    return _BUILT[family]


def batch_of(sm: SteerableModel, family: str, **kw):
    images = [[tiny_image(0)], [tiny_image(1)]] if family in VLM_FAMILIES else None
    return sm.encode(PROMPTS, images, **kw)


def diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        return max(diff(x, y) for x, y in zip(a, b, strict=True))
    return float((a.float() - b.float()).abs().max())


def assert_same_generation(g_loc, g_rem) -> None:
    assert torch.equal(g_loc.sequences, g_rem.sequences)
    assert g_loc.texts == g_rem.texts
    assert diff(g_loc.logits, g_rem.logits) <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_family_remote_equals_local(family):
    loc, rem = pair(family)
    b = batch_of(loc, family)
    assert bool((b.attention_mask == 0).any())  # the short row is left-padded
    reads = [(0, "last_prompt"), (loc.num_layers - 1, "prompt_mean"), (1, "per_token")]
    got_l, got_r = loc.read_many(b, reads), rem.read_many(b, reads)
    assert max(diff(got_l[k], got_r[k]) for k in got_l) <= TOL
    v = torch.randn(2, loc.hidden_size, generator=torch.Generator().manual_seed(0))  # one vector per row
    iv = Intervention.build(1, v, alpha=3.0, positions="all")
    logits = loc.forward(b, iv)
    assert diff(logits, rem.forward(b, iv)) <= TOL
    assert diff(logits, loc.forward(b)) > 1e-3  # the vectors do steer
    g_l = loc.generate(b, iv, max_new_tokens=4, output_logits=True, collect=[1])
    g_r = rem.generate(b, iv, max_new_tokens=4, output_logits=True, collect=[1])
    assert_same_generation(g_l, g_r)
    assert diff(g_l.states[1], g_r.states[1]) <= TOL


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "last_prompt", "text", "image"])
def test_every_position_mode(positions):
    family = "llava" if positions == "image" else "llama"
    loc, rem = pair(family)
    b = batch_of(loc, family)
    v = torch.randn(2, loc.hidden_size, generator=torch.Generator().manual_seed(1))
    iv = Intervention.build([0, 2], {0: v, 2: -v[0]}, alpha=2.0, positions=positions)
    assert_same_generation(loc.generate(b, iv, max_new_tokens=4, output_logits=True),
                           rem.generate(b, iv, max_new_tokens=4, output_logits=True))
    assert diff(loc.read(b, [2], intervention=iv)[2], rem.read(b, [2], intervention=iv)[2]) <= TOL


def test_ablation_and_norm_preserving():
    loc, rem = pair("llama")
    b = batch_of(loc, "llama")
    u = torch.randn(loc.hidden_size, generator=torch.Generator().manual_seed(2))
    iv = Intervention.build(1, u, alpha=1.5, ablate={1: u}, norm_preserving=True)
    assert_same_generation(loc.generate(b, iv, max_new_tokens=3, output_logits=True),
                           rem.generate(b, iv, max_new_tokens=3, output_logits=True))


def _items(n=6):
    beh = ["harmful", "benign"]
    return [ContrastiveItem(prompt=f"Question number {i} about the {'cat' if i % 2 else 'weather'} today",
                            positive="I cannot help with that." if i % 2 else "Sure.",
                            negative="Sure, here is how." if i % 2 else "Sure.", behavior=beh[i % 2])
            for i in range(n)]


def test_p2s_and_mean_s_fit_from_remote_reads():
    loc, rem = pair("llama")
    items = _items()
    f_l = extract_p2s(loc, items, 1, input_layer=0, progress=False)
    f_r = extract_p2s(rem, items, 1, input_layer=0, progress=False)
    assert f_l.z.abs().max() > 1e-3
    assert diff(f_l.z, f_r.z) <= TOL and diff(f_l.h, f_r.h) <= TOL
    m_l = MeanSteer(1, progress=False).fit(loc, items)
    m_r = MeanSteer(1, progress=False).fit(rem, items)
    b = batch_of(loc, "llama")
    assert_same_generation(m_l.generate_batch(loc, PROMPTS, max_new_tokens=4, output_logits=True),
                           m_r.generate_batch(rem, PROMPTS, max_new_tokens=4, output_logits=True))
    assert diff(loc.read(b, [2])[2], rem.read(b, [2])[2]) <= TOL


def test_sampled_mean_is_seeded_from_the_client():
    """Sampling happens on the server; its seed comes from the client's generator, so a seeded client
    reproduces its remote P2S sampled means (they are not the samples a local run draws)."""
    _, rem = pair("llama")
    items = _items(4)
    runs = [extract_p2s(rem, items, 1, reduction="sampled_mean", continuation_tokens=3, input_layer=0, seed=s,
                        progress=False) for s in (0, 0, 1)]
    assert runs[0].z.abs().max() > 1e-3
    assert diff(runs[0].z, runs[1].z) == 0 and diff(runs[0].h, runs[1].h) == 0
    assert diff(runs[0].z, runs[2].z) > 0


@pytest.mark.parametrize(("layer", "input_layer"), [(1, 0), (0, 1)], ids=["g-in-pass", "extra-prefill"])
def test_l2s_both_placements_one_request(layer, input_layer):
    loc, rem = pair("llama")
    items = _items()
    fits = []
    for sm in (loc, rem):  # g trains here on the states the (remote) reads returned
        torch.manual_seed(0)
        fits.append(L2S(layer, input_layer=input_layer, hidden=8, epochs=3, lr=1e-2, progress=False).fit(sm, items))
    b = batch_of(loc, "llama")
    iv_l, iv_r = fits[0].intervention(loc, items, b, alpha=4.0), fits[1].intervention(rem, items, b, alpha=4.0)
    assert iv_l.needs_extra_prefill == (input_layer > layer)
    before = rem._tracer.requests
    g_r = rem.generate(b, iv_r, max_new_tokens=4, output_logits=True)
    assert rem._tracer.requests - before == 1  # the prefill, g and the steered pass travel as one request
    g_l = loc.generate(b, iv_l, max_new_tokens=4, output_logits=True)
    assert_same_generation(g_l, g_r)
    assert diff(g_l.logits, loc.generate(b, max_new_tokens=4, output_logits=True).logits) > 1e-3
    assert diff(loc.read(b, [2], intervention=iv_l)[2], rem.read(b, [2], intervention=iv_r)[2]) <= TOL


def test_fails_when_steerlib_is_not_shipped(monkeypatch):
    """The simulation hides steerlib (even an editable install's import hook): without shipping it
    by value, deserializing the request fails as it would on an NDIF server."""
    _, rem = pair("llama")
    b = batch_of(rem, "llama")
    monkeypatch.setattr(remote_mod, "shipping", contextlib.nullcontext)
    with pytest.raises(ModuleNotFoundError, match="steerlib"):
        rem.read(b, [1])


def test_only_saved_values_come_back():
    """The request runs on its own deserialized copies: a client-side callback is refused (its
    effects could never travel back), and the recorder's results come back through the response."""
    _, rem = pair("llama")
    b = batch_of(rem, "llama")
    with pytest.raises(RemoteError, match="recorder"):
        rem._tracer.read(rem._model_inputs(b), None, (1,), b, lambda layer, h: None)
    rem.read(b, [1])
    sim = rem._tracer.last
    assert isinstance(sim, StrictLocalSimulation) and 0 < sim.result_bytes < sim.payload_bytes


def test_version_mismatch_refused_before_sending(monkeypatch):
    from nnsight import ndif
    from nnsight.intervention.backends import remote as nn_remote

    from nnsight.modeling import huggingface

    t = build_tiny("llama")
    with pytest.raises(InputError, match="repo id"):  # an in-memory model has no deployment to name
        SteerableModel(t.model, t.processor, remote=True)
    repo = "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.setitem(huggingface._ID_CACHE, repo, repo)  # the key's Hub look-up, offline
    rem = remote_steerable(repo, config=t.model.config, tokenizer=copy.deepcopy(t.processor), task="text-generation")
    local = ndif.get_local_env()
    server = copy.deepcopy(local)
    server["packages"]["torch"] = "0.0.1"
    monkeypatch.setattr(ndif, "get_remote_env", lambda force_refresh=False: server)

    def never(*a, **k):
        raise AssertionError("a request was sent")

    monkeypatch.setattr(nn_remote.RemoteBackend, "__call__", never)
    with pytest.raises(RemoteEnvironmentError, match=r"torch: client .*, server 0\.0\.1"):
        rem.generate(rem.encode(["Hi"]), max_new_tokens=2)
    assert issubclass(RemoteEnvironmentError, SteerlibError)
    monkeypatch.setattr(ndif, "get_remote_env", lambda force_refresh=False: local)
    with pytest.raises(AssertionError, match="was sent"):  # matching versions: the request goes out
        rem.read(rem.encode(["Hi"]), [1])


def test_meta_client_runs_on_a_server_model(monkeypatch):
    """A model named by repo id, built on the meta device from its config (no weights), sends its
    passes to a "server" holding the real weights; results equal a local run of those weights."""
    from nnsight import TransformersModel

    t = build_tiny("llama")
    loc = SteerableModel(t.model, t.processor)
    rem = remote_steerable("HuggingFaceTB/SmolLM2-135M-Instruct", config=t.model.config,
                           tokenizer=copy.deepcopy(t.processor), task="text-generation")
    assert rem.on_meta and rem.num_layers == loc.num_layers and rem.hidden_size == loc.hidden_size
    for mode in (False, "local"):  # a meta model cannot run here (nor would the simulation load its weights)
        with pytest.raises(InputError, match="meta device"):
            SteerableModel(rem._wrapper, rem.processor, remote=mode)
    server = TransformersModel(t.model, tokenizer=copy.deepcopy(t.processor), task="text-generation")
    monkeypatch.setattr(remote_mod.RemoteBackend, "_route", lambda self: {"backend": StrictLocalSimulation(server)})
    b = loc.encode(PROMPTS)
    assert torch.equal(b.inputs["input_ids"], rem.encode(PROMPTS).inputs["input_ids"])
    assert diff(loc.read(b, [1])[1], rem.read(b, [1])[1]) <= TOL
    v = torch.randn(2, loc.hidden_size, generator=torch.Generator().manual_seed(3))
    iv = Intervention.build(1, v, alpha=2.0)
    assert_same_generation(loc.generate(b, iv, max_new_tokens=4, output_logits=True),
                           rem.generate(b, iv, max_new_tokens=4, output_logits=True))


def test_refusals():
    t = build_tiny("llama")
    with pytest.raises(InputError, match="hooks"):
        SteerableModel(t.model, t.processor, backend="hooks", remote="local")
    with pytest.raises(InputError, match="remote="):
        SteerableModel(t.model, t.processor, remote="ndif")  # type: ignore[arg-type]
    from steerlib.zoo import load_steerable

    assert load_steerable("tiny:llama", remote="local").remote == "local"
    with pytest.raises(InputError, match="repo id"):
        load_steerable("tiny:llama", remote=True)


@pytest.mark.real
def test_smollm2_remote_equals_local():
    from steerlib.zoo import load_steerable

    loc = load_steerable("smollm2")
    rem = SteerableModel(loc.model, loc.processor, remote="local")
    b = loc.encode(PROMPTS)
    reads = [(10, "last_prompt"), (20, "prompt_mean")]
    got_l, got_r = loc.read_many(b, reads), rem.read_many(b, reads)
    assert max(diff(got_l[k], got_r[k]) for k in got_l) <= TOL
    v = torch.randn(2, loc.hidden_size, generator=torch.Generator().manual_seed(0))
    iv = Intervention.build(12, v, alpha=4.0, positions="all")
    assert_same_generation(loc.generate(b, iv, max_new_tokens=6, output_logits=True),
                           rem.generate(b, iv, max_new_tokens=6, output_logits=True))
    items = _items(4)
    for layer, input_layer in ((12, 10), (10, 12)):
        torch.manual_seed(0)
        l2s = L2S(layer, input_layer=input_layer, hidden=8, epochs=2, progress=False).fit(rem, items)
        iv = l2s.intervention(rem, items, b, alpha=4.0)
        assert_same_generation(loc.generate(b, iv, max_new_tokens=6, output_logits=True),
                               rem.generate(b, iv, max_new_tokens=6, output_logits=True))
