"""The tiny offline model factory: every family builds, renders chats, batches and generates."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from steerlib.testing import (
    FAMILIES,
    NESTED_IMAGE_FAMILIES,
    TEXT_FAMILIES,
    VLM_FAMILIES,
    TinyModel,
    build_tiny,
    tiny_image,
)

_CACHE: dict[str, TinyModel] = {}


def _tiny(family: str) -> TinyModel:
    """One build per family for the read-only tests of this module."""
    if family not in _CACHE:
        _CACHE[family] = build_tiny(family)
    return _CACHE[family]


def _content(tm: TinyModel, text: str, n_images: int = 0) -> Any:
    if not tm.is_vlm:
        return text
    return [{"type": "image"}] * n_images + [{"type": "text", "text": text}]


def _image_token_id(tm: TinyModel) -> int:
    cfg = tm.model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    raise AssertionError(f"{tm.family}: no image token id in the config")


def _batch_images(family: str, n: int) -> list[Any]:
    images = [tiny_image(seed=i) for i in range(n)]
    return [[im] for im in images] if family in NESTED_IMAGE_FAMILIES else images


@pytest.fixture
def transformers_logs() -> Iterator[list[logging.LogRecord]]:
    """Records of the ``transformers`` logger (it does not propagate to pytest's caplog)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_family_lists() -> None:
    assert VLM_FAMILIES == FAMILIES[:10]
    assert TEXT_FAMILIES == FAMILIES[10:] == ("llama", "qwen2", "gpt2", "gemma3_text")
    assert set(NESTED_IMAGE_FAMILIES) == {"gemma3", "idefics3", "smolvlm", "mllama"}


def test_family_lists_are_read_off_the_adapter_table() -> None:
    """The rosters come from ``BUILTIN_ADAPTERS``' fields (``is_vlm``, ``nested_images``), not from list order."""
    from steerlib.adapters import BUILTIN_ADAPTERS

    assert VLM_FAMILIES == tuple(a.family for a in BUILTIN_ADAPTERS if a.is_vlm)
    assert TEXT_FAMILIES == tuple(a.family for a in BUILTIN_ADAPTERS if not a.is_vlm)
    assert NESTED_IMAGE_FAMILIES == tuple(a.family for a in BUILTIN_ADAPTERS if a.nested_images)
    assert sorted(FAMILIES) == sorted(a.family for a in BUILTIN_ADAPTERS)


def test_every_adapter_row_has_a_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    from steerlib.testing import tiny

    assert set(tiny._BUILDERS) == set(FAMILIES)
    # a row added to steerlib/adapters/families.py without a builder is named as such
    monkeypatch.setattr(tiny, "FAMILIES", (*FAMILIES, "gpt_neox"))
    with pytest.raises(ValueError, match="'gpt_neox' has an adapter row.*no tiny builder"):
        build_tiny("gpt_neox")


def test_library_code_never_imports_the_test_factory() -> None:
    """Only tests, docs, the zoo and the application layer import steerlib.testing (never the core)."""
    import ast
    from pathlib import Path

    import steerlib

    root = Path(steerlib.__file__).parent
    allowed = ("testing/", "zoo/", "app/")
    shims = {"weights.py", "loading.py", "models/__init__.py", "models/tiny_llava.py"}  # deprecated aliases of zoo
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(allowed) or rel in shims:
            continue
        package = ["steerlib", *rel.split("/")[:-1]]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                names = [".".join([*base, *(node.module or "").split(".")]).strip(".")]
                names += [f"{names[0]}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n == "steerlib.testing" or n.startswith("steerlib.testing.") for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


def test_unknown_family_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="llava.*gemma3_text"):
        build_tiny("not_a_family")


@pytest.mark.parametrize("family", FAMILIES)
def test_build_render_batch_generate(family: str, transformers_logs: list[logging.LogRecord]) -> None:
    tm = _tiny(family)
    model, proc, tok = tm.model, tm.processor, tm.tokenizer
    assert tm.family == family and tm.is_vlm == (family in VLM_FAMILIES)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert model.config.get_text_config().hidden_size == 64
    assert model.get_output_embeddings().out_features == len(tok)  # Mllama embeds 8 extra rows
    assert tok.chat_template and getattr(proc, "chat_template", None)
    assert (proc is tok) == (not tm.is_vlm) and (proc is tok or proc.tokenizer is tok)
    assert model.generation_config.pad_token_id == tok.pad_token_id is not None

    questions = ["What is in the image?", "Is there a cat sitting on the table? Answer yes or no, please."]
    conversations = [[{"role": "user", "content": _content(tm, q, n_images=1)}] for q in questions]
    with_prompt = [proc.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    without = proc.apply_chat_template(conversations[0], add_generation_prompt=False, tokenize=False)
    assert with_prompt[0].startswith(without)
    if family != "llava_next":  # Mistral's [INST] ... [/INST] needs no generation prompt
        assert with_prompt[0] != without

    if tm.is_vlm:
        enc = proc(
            text=with_prompt, images=_batch_images(family, 2), return_tensors="pt", padding=True, padding_side="left"
        )
    else:
        enc = proc(with_prompt, return_tensors="pt", padding=True, padding_side="left")
    inputs = {k: v for k, v in enc.items() if k != "labels"}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape[0] == 2
    assert mask[0, 0] == 0 and bool(mask[:, -1].all()), "left padding: the shorter prompt is padded in front"
    if tok.bos_token and tok.bos_token != tok.pad_token:
        bos_counts = (ids == tok.bos_token_id).sum(dim=1)
        assert bos_counts.tolist() == [1, 1], "one BOS per row, whether the template or the processor writes it"
    if tm.is_vlm:
        counts = (ids == _image_token_id(tm)).sum(dim=1)
        assert counts[0] > 0 and counts[0] == counts[1]

    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, ids.shape[1] + 3)
    assert not [r.getMessage() for r in transformers_logs if "pad" in r.getMessage().lower()]


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_roles_and_continuation(family: str) -> None:
    tm = _tiny(family)
    proc = tm.processor
    n = 1 if tm.is_vlm else 0
    chat = [
        {"role": "system", "content": _content(tm, "Be brief.")},
        {"role": "user", "content": _content(tm, "Is it a dog?", n_images=n)},
    ]
    reply = {"role": "assistant", "content": _content(tm, "Yes it is")}
    prompt = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    closed = proc.apply_chat_template([*chat, reply], tokenize=False)
    open_ = proc.apply_chat_template([*chat, reply], tokenize=False, continue_final_message=True)
    assert "Be brief." in prompt and "Is it a dog?" in prompt
    assert closed.startswith(prompt) and open_.startswith(prompt)
    assert open_.endswith("Yes it is")
    trailer = closed[len(open_) :]
    assert trailer.strip(), "a closed assistant turn ends with the family's end-of-turn marker"
    assert any(t in trailer for t in tm.tokenizer.all_special_tokens), trailer
    # string content and a single text part render the same
    as_text = [{"role": "user", "content": "Hello there"}]
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    assert proc.apply_chat_template(as_text, tokenize=False) == proc.apply_chat_template(as_parts, tokenize=False)
    # the tokenizer's own template renders the same text
    if tm.is_vlm:
        assert tm.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == prompt


@pytest.mark.parametrize(
    ("family", "placeholder"),
    [
        ("llava", "<image>\n"),
        ("llava_next", "<image>\n"),
        ("qwen2_vl", "<|vision_start|><|image_pad|><|vision_end|>"),
        ("qwen2_5_vl", "<|vision_start|><|image_pad|><|vision_end|>"),
        ("idefics3", "<image>"),
        ("smolvlm", "<image>"),
        ("paligemma", "<image>"),
        ("gemma3", "<start_of_image>"),
        ("mllama", "<|image|>"),
        ("internvl", "<IMG_CONTEXT>\n"),
    ],
)
def test_image_placeholders(family: str, placeholder: str) -> None:
    tm = _tiny(family)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]}]
    text = tm.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert text.count(placeholder) == 2


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_templates_refuse_images(family: str) -> None:
    tok = _tiny(family).tokenizer
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    with pytest.raises(Exception, match="text-only"):
        tok.apply_chat_template(chat, tokenize=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_deterministic(family: str) -> None:
    rng_before = torch.random.get_rng_state()
    a, b = build_tiny(family, seed=0), build_tiny(family, seed=0)
    assert torch.equal(rng_before, torch.random.get_rng_state()), "the caller's RNG is left alone"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.tokenizer is not b.tokenizer and a.processor is not b.processor
    c = build_tiny(family, seed=1)
    assert any(not torch.equal(sa[k], v) for k, v in c.model.state_dict().items())


def test_fresh_tokenizers_do_not_share_state() -> None:
    a, b = build_tiny("llama"), build_tiny("llama")
    a.tokenizer.padding_side = "left"
    a.tokenizer.add_tokens(["<new_token>"])
    assert b.tokenizer.padding_side == "right" and "<new_token>" not in b.tokenizer.get_vocab()


def test_tokenizer_splits_words_sensibly() -> None:
    tok = _tiny("llama").tokenizer
    ids = tok("What is in the image?", add_special_tokens=False)["input_ids"]
    assert len(ids) <= 10
    assert tok.decode(ids) == "What is in the image?"


def test_tiny_image_is_deterministic() -> None:
    a, b, c = tiny_image(0), tiny_image(0), tiny_image(1)
    assert a.mode == "RGB" and a.size == (32, 32)
    assert a.tobytes() == b.tobytes() != c.tobytes()
    assert tiny_image(0, size=48).size == (48, 48)
