"""A model larger than one device: loaded with an accelerate ``device_map`` that puts part of it
on the CPU and part on disk (an offload folder), it reads and steers exactly like the same model
in memory (greedy tokens identical, reads and logits within 1e-5, reads returned on the CPU)."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("accelerate")

from steerlib import ContrastiveItem, Intervention, SteerableModel
from steerlib.steerers import L2S
from steerlib.testing import build_tiny
from steerlib.zoo import load_steerable

TOL = 1e-5
PROMPTS = ["Hello there friend, how are you doing today?", "Hi"]
# the embedding, two of the three decoder layers and the head on disk; layer 0 and the norm in memory
DEVICE_MAP = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
              "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}


def diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        return max(diff(x, y) for x, y in zip(a, b, strict=True))
    return float((a.float() - b.float()).abs().max())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    t = build_tiny("llama")
    folder = tmp_path_factory.mktemp("tiny-llama")
    t.model.save_pretrained(folder)
    t.processor.save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spread = load_steerable(str(folder), device_map=DEVICE_MAP, offload_folder=str(folder / "offload"))
    return SteerableModel(t.model, t.processor), spread, folder


def test_part_of_the_model_is_on_disk(models):
    _, spread, _ = models
    assert spread.model.hf_device_map == DEVICE_MAP
    devices = {p.device.type for p in spread.model.parameters()}
    assert devices == {"cpu", "meta"}  # offloaded weights stay on disk until their layer runs
    hook = spread.model.model.layers[1].self_attn.q_proj._hf_hook  # accelerate's offload hook
    loader = hook.weights_map.dataset
    key = "model.layers.1.self_attn.q_proj.weight"
    assert hook.offload and key in loader.index and key not in loader.state_dict  # read from disk at each forward
    assert spread.device == torch.device("cpu")  # the execution device, not the first parameter's (meta)


@pytest.mark.parametrize("backend", ["nnsight", "hooks"])
def test_reads_and_steering_equal_in_memory(models, backend):
    mem, spread, _ = models
    if backend == "hooks":
        spread = SteerableModel(spread.model, spread.processor, backend="hooks")
    b = mem.encode(PROMPTS)
    reads = [(0, "last_prompt"), (1, "per_token"), (2, "prompt_mean")]
    got_m, got_s = mem.read_many(b, reads), spread.read_many(b, reads)
    assert max(diff(got_m[k], got_s[k]) for k in got_m) <= TOL
    assert {v.device.type for v in got_s.values()} == {"cpu"}
    v = torch.randn(2, mem.hidden_size, generator=torch.Generator().manual_seed(0))
    iv = Intervention.build([0, 1, 2], v, alpha=3.0)  # layers in memory and on disk
    g_m = mem.generate(b, iv, max_new_tokens=5, output_logits=True, collect=[1])
    g_s = spread.generate(b, iv, max_new_tokens=5, output_logits=True, collect=[1])
    assert torch.equal(g_m.sequences, g_s.sequences)
    assert diff(g_m.logits, g_s.logits) <= TOL and diff(g_m.states[1], g_s.states[1]) <= TOL
    assert diff(g_m.logits, mem.generate(b, max_new_tokens=5, output_logits=True).logits) > 1e-3


@pytest.mark.parametrize(("layer", "input_layer"), [(2, 1), (1, 2)], ids=["g-in-pass", "extra-prefill"])
def test_l2s_on_an_offloaded_model(models, layer, input_layer):
    mem, spread, _ = models
    items = [ContrastiveItem(prompt=f"Question {i} about the {'cat' if i % 2 else 'weather'}",
                             positive="I cannot help." if i % 2 else "Sure.", negative="Sure, here." if i % 2 else "Sure.",
                             behavior="harmful" if i % 2 else "benign") for i in range(6)]
    fits = []
    for sm in (mem, spread):
        torch.manual_seed(0)
        fits.append(L2S(layer, input_layer=input_layer, hidden=8, epochs=3, lr=1e-2, progress=False).fit(sm, items))
    b = mem.encode(PROMPTS)
    g_m = mem.generate(b, fits[0].intervention(mem, items, b, alpha=4.0), max_new_tokens=4, output_logits=True)
    g_s = spread.generate(b, fits[1].intervention(spread, items, b, alpha=4.0), max_new_tokens=4, output_logits=True)
    assert torch.equal(g_m.sequences, g_s.sequences)
    assert diff(g_m.logits, g_s.logits) <= TOL
