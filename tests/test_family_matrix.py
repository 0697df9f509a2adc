"""The family matrix (issue 16): every decoder family transformers can build offline is either steered
exactly (against raw forward hooks and HF hidden states) or refused with a SteerlibError naming why.

The default run checks a fast subset plus planted cases (nested vision towers, several block lists,
stacked layer outputs, models that ignore the attention mask, encoder-decoders, models that need
pixel values, 3-D rotary position ids). The whole matrix is marked ``family_matrix`` and runs only when
selected: ``HF_HUB_OFFLINE=1 python -m pytest -q -m family_matrix tests/test_family_matrix.py``
(or with ``STEERLIB_FAMILY_MATRIX=1``).
"""

from __future__ import annotations

import copy
import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from reference import hook_generate, max_logit_diff
from steerlib import Adapter, Intervention, SteerableModel
from steerlib.adapters import find_decoder_adapter
from steerlib.adapters.finder import detect_vlm, search_stacks
from steerlib.errors import AdapterValidationError, SteerlibError, UnknownArchitectureError, UnsupportedModelError
from steerlib.testing import build_tiny, tiny_image
from steerlib.testing.matrix import build_matrix_model, check_family, matrix_families

torch.set_num_threads(1)


def _assert_exact_or_refused(row: Any) -> None:
    assert not row.reason.startswith("FAIL"), row.reason
    assert not row.silently_wrong, (row.model_type, row.checks)


# ------------------------------------------------------------------------- fast subset ----
FAST: dict[str, tuple[str, str]] = {
    # model_type: (expected found, a phrase of the expected reason or path)
    "gpt_neox": ("fallback", "gpt_neox.layers"),
    "opt": ("fallback", "model.decoder.layers"),
    "qwen3_vl": ("fallback", "model.language_model.layers"),  # vision tower nested at model.visual
    "vipllava": ("fallback", "model.language_model.layers"),  # LLaVA layout, no built-in row
    "mamba": ("fallback", "backbone.layers"),  # HF hidden_states[i] is block i (no embeddings entry)
    "rwkv": ("fallback", "rwkv.blocks"),  # ignores the attention mask: padded batches refused
    "llava": ("registered", "model.language_model.layers"),
    "t5": ("refused", "encoder-decoder"),
    "bert": ("refused", "encoder stack"),
    "hy_v4": ("refused", "stacked"),
}


@pytest.mark.parametrize("model_type", sorted(FAST))
def test_fast_matrix_subset(model_type: str) -> None:
    row = check_family(model_type)
    found, phrase = FAST[model_type]
    assert row.found == found, (row.found, row.reason)
    assert phrase in (row.path if found != "refused" else row.reason)
    _assert_exact_or_refused(row)
    if found != "refused":
        assert row.checks["steer_b1"] == "pass"
        assert row.checks["read"].startswith("pass")
    if model_type == "mamba":
        assert row.checks["read"] == "pass (hidden_states[i + 0])"
    if model_type == "rwkv":
        assert row.checks["steer_b2"].startswith("refused: UnsupportedModelError") and "attention mask" in row.checks["steer_b2"]
    if model_type in ("qwen3_vl", "vipllava"):
        assert row.kind == "vlm" and row.checks["image_mask"] == "pass" and row.checks["image_generate"] == "pass"
    if found == "fallback" and model_type not in ("rwkv",):
        assert row.checks["steer_b2"] == "pass" and row.checks["batch_invariance"] == "pass"


# ------------------------------------------------------------------------- whole matrix ----
def _whole_matrix_selected(config: pytest.Config) -> bool:
    return "family_matrix" in (config.option.markexpr or "") or os.environ.get("STEERLIB_FAMILY_MATRIX") == "1"


@pytest.mark.family_matrix
@pytest.mark.parametrize("model_type", matrix_families())
def test_whole_matrix(model_type: str, request: pytest.FixtureRequest) -> None:
    if not _whole_matrix_selected(request.config):
        pytest.skip("the whole family matrix runs with -m family_matrix (or STEERLIB_FAMILY_MATRIX=1)")
    row = check_family(model_type)
    if row.found == "skipped":
        pytest.skip(row.reason)
    _assert_exact_or_refused(row)


# ------------------------------------------------------------------------- planted cases ----
class _Block(nn.Module):
    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x + self.lin(x)


class _Decoys(nn.Module):
    """A text model behind decoy block lists: a (never run) perceiver and vision tower of the same length,
    and an unnamed auxiliary stack, bigger, that ranks first and fails the probe."""

    def __init__(self, inner: nn.Module, *, with_vision: bool) -> None:
        super().__init__()
        self.aux = nn.Module()
        self.aux.layers = nn.ModuleList([_Block(64) for _ in range(3)])
        for blk in self.aux.layers:
            blk.extra = nn.Linear(64, 4096)  # makes it the largest candidate
        self.perceiver = nn.Module()
        self.perceiver.layers = nn.ModuleList([_Block(64) for _ in range(3)])
        if with_vision:
            self.vision = nn.Module()
            self.vision.encoder = nn.Module()
            self.vision.encoder.visual = nn.Module()
            self.vision.encoder.visual.blocks = nn.ModuleList([_Block(64) for _ in range(3)])
        self.inner = inner
        self.config = copy.deepcopy(inner.config)
        self.config.model_type = "decoy_lm"

    def forward(self, **kw: Any) -> Any:
        return self.inner(**kw)

    def generate(self, **kw: Any) -> Any:
        return self.inner.generate(**kw)


def test_validation_tries_the_next_candidate_and_says_which_it_chose() -> None:
    t = build_tiny("llama")
    model = _Decoys(t.model, with_vision=True).eval()
    search = search_stacks(model)
    assert [c.path for c in search.ranked][:2] == ["aux.layers", "inner.model.layers"]
    assert {c.path for c in search.rejected} == {"perceiver.layers", "vision.encoder.visual.blocks"}
    with pytest.warns(UserWarning, match="inner.model.layers"):
        sm = SteerableModel(model, t.tokenizer)
    assert sm.adapter.layers_path == "inner.model.layers" and "inner.model.layers" in repr(sm.adapter)
    b = sm.encode(["hello there", "a longer prompt about the weather today"])
    V = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    got = sm.generate(b, Intervention.build(1, V, alpha=2.0), max_new_tokens=3, output_logits=True)
    ref = hook_generate(t.model, t.model.model.layers[1], b.inputs, V, 2.0, b.attention_mask.bool(), True, 3,
                        t.tokenizer.pad_token_id)
    assert torch.equal(got.sequences, ref.sequences) and max_logit_diff(got.logits, list(ref.logits)) <= 1e-5


def test_all_candidates_rejected_names_each_path_and_reason() -> None:
    t = build_tiny("llama")
    model = _Decoys(t.model, with_vision=False).eval()
    model.inner.model.layers = nn.ModuleList(list(model.inner.model.layers)[:2] + [model.inner.model.layers[2]])
    model.config.num_hidden_layers = 5  # no stack has 5 blocks: every candidate fails the layer count
    with pytest.raises(AdapterValidationError) as e:
        SteerableModel(model, t.tokenizer)
    msg = str(e.value)
    assert "'aux.layers'" in msg and "'inner.model.layers'" in msg and "config says 5" in msg


def test_vlm_detected_from_nested_vision_tower_and_config() -> None:
    tm = build_matrix_model("qwen3_vl")
    assert not any("vis" in n for n, _ in tm.model.named_children())  # the tower is not a top-level child
    evidence = detect_vlm(tm.model, tm.processor)
    assert "config.vision_config" in evidence and any("visual" in e for e in evidence)
    found = find_decoder_adapter(tm.model, tm.processor)
    assert found is not None and found.is_vlm and found.layers_path == "model.language_model.layers"
    assert not found.pass_position_ids


class _LoopedBlocks(nn.Module):
    """A decoder whose ModuleList holds one block run twice (a weight-shared loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "looped_lm", "hidden_size": 8, "num_hidden_layers": 1})()
        self.emb = nn.Embedding(500, 8)
        self.layers = nn.ModuleList([_Block(8)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any) -> Any:
        h = self.emb(input_ids)
        for _ in range(2):
            h = self.layers[0](h)
        return type("Out", (), {"logits": h})()


class _StackedBlocks(_LoopedBlocks):
    """A decoder whose blocks return a stacked ``[k, batch, seq, hidden]`` state."""

    def __init__(self) -> None:
        super().__init__()
        self.config.model_type = "stacked_lm"
        self.layers[0].register_forward_hook(lambda _m, _i, o: torch.stack([o, o]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any) -> Any:
        h = self.emb(input_ids)
        s = self.layers[0](h)
        return type("Out", (), {"logits": s[0]})()


@pytest.mark.parametrize(("cls", "phrase"), [(_LoopedBlocks, "several times per forward"),
                                             (_StackedBlocks, r"shape \[2, 1, \d+, 8\]")])
def test_unhandled_layers_are_refused(cls: type, phrase: str) -> None:
    tok = build_tiny("llama").tokenizer
    with pytest.raises(UnsupportedModelError, match=phrase):
        SteerableModel(cls(), tok)


def test_encoder_decoder_is_refused_even_with_an_adapter() -> None:
    tm = build_matrix_model("t5")
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        SteerableModel(tm.model, tm.processor, adapter=Adapter(family="t5", model_types=("t5",),
                                                               layers_path="decoder.block"))


def test_mask_ignoring_model_refuses_padded_batches_and_is_exact_alone() -> None:
    tm = build_matrix_model("rwkv")
    with pytest.warns(UserWarning, match="ignores the attention mask"):
        sm = SteerableModel(tm.model, tm.processor)
    with pytest.raises(UnsupportedModelError, match="attention mask"):
        sm.generate(sm.encode(["Hi", "a much longer prompt than the first one"]), max_new_tokens=2)
    b = sm.encode(["a much longer prompt than the first one"])
    v = torch.randn(1, sm.hidden_size, generator=torch.Generator().manual_seed(0))
    got = sm.generate(b, Intervention.build(1, v, alpha=2.0), max_new_tokens=3, output_logits=True)
    ref = hook_generate(tm.model, sm.adapter.layers(tm.model)[1], b.inputs, v, 2.0, b.attention_mask.bool(), True, 3,
                        sm.tokenizer.pad_token_id)
    assert torch.equal(got.sequences, ref.sequences) and max_logit_diff(got.logits, list(ref.logits)) <= 1e-5


class _NeedsPixels(nn.Module):
    """A VLM of an unknown model_type whose every forward needs pixel values."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = copy.deepcopy(inner.config)
        self.config.model_type = "needs_pixels"

    def get_decoder(self) -> nn.Module:
        return self.inner.get_decoder()

    def forward(self, pixel_values: torch.Tensor | None = None, **kw: Any) -> Any:
        if pixel_values is None:
            raise ValueError("pixel_values are required")
        return self.inner(pixel_values=pixel_values, **kw)


def test_probe_uses_a_tiny_image_when_the_model_needs_pixel_values() -> None:
    t = build_tiny("llava")
    model = _NeedsPixels(t.model).eval()
    with pytest.warns(UserWarning, match="inner.model.language_model.layers"):
        sm = SteerableModel(model, t.processor)
    assert sm.adapter.is_vlm
    b = sm.encode(["What is this?"], [[tiny_image(0)]])
    got = sm.read(b, [1], reduce="per_token")[1]
    with torch.no_grad():
        hs = t.model(**b.inputs, output_hidden_states=True).hidden_states
    assert float((got - hs[2]).abs().max()) <= 1e-5
    with pytest.raises(AdapterValidationError, match="inner.model.language_model.layers.*pixel_values are required"):
        SteerableModel(model, t.tokenizer)  # a tokenizer alone cannot make the image the model needs


def test_user_vlm_adapter_with_default_position_ids_stays_exact() -> None:
    """A user row for a 3-D rotary model that leaves pass_position_ids=True must not change forward logits."""
    t = build_tiny("qwen2_vl")
    row = Adapter(family="my_qwen", model_types=("qwen2_vl",), layers_path="model.language_model.layers", is_vlm=True)
    with pytest.warns(UserWarning, match="computes its own position ids"):
        sm = SteerableModel(t.model, t.processor, adapter=row)
    b = sm.encode(["Describe it.", "What colour is the thing in this image?"], [[tiny_image(1)], [tiny_image(2)]])
    with torch.no_grad():
        ref = t.model(**b.inputs).logits
    assert float((sm.forward(b) - ref).abs().max()) <= 1e-5


def test_unknown_architecture_names_rejected_stacks() -> None:
    tm = build_matrix_model("bert")
    with pytest.raises(UnknownArchitectureError, match=r"'bert.encoder.layer'.*an encoder stack"):
        SteerableModel(tm.model, tm.processor)


def test_refusals_are_steerlib_errors() -> None:
    assert issubclass(UnsupportedModelError, SteerlibError) and issubclass(UnsupportedModelError, ValueError)
