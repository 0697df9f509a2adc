"""Every bad input of issue 7 raises a ``SteerlibError`` subclass whose message names the problem
and the fix; saving is atomic (a crash never leaves a half-written or missing folder).

Each check goes through :func:`raises`, which asserts the exception type, that it derives from
``SteerlibError``, and that the message matches key phrases for the problem *and* for the fix.
Set ``STEERLIB_ERROR_LOG=path`` to write every checked message (one a line) to ``path``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import transformers as tf
from safetensors.torch import save_file
from torch import nn

import steerlib.persistence as persistence
from steerlib import ContrastiveItem, Intervention, Positions, SteerableModel, SteerlibError, get_adapter
from steerlib.data import load_image
from steerlib.data import loaders as L
from steerlib.errors import (
    CompatibilityError,
    DataError,
    DataFileError,
    InputError,
    LayerIndexError,
    NonFiniteError,
    PersistenceError,
    PositionError,
    ShapeMismatchError,
    UnknownArchitectureError,
)
from steerlib.intervention import check_layers
from steerlib.steerers import L2S, P2S, MeanSteer, MeanSteerBA, Steerer, extract_p2s
from steerlib.testing import build_tiny, tiny_image

LAYER = 1
MESSAGES: list[str] = []


@contextlib.contextmanager
def raises(exc_type: type[BaseException], *phrases: str) -> Iterator[pytest.ExceptionInfo]:
    """``pytest.raises(exc_type)`` + the type is a SteerlibError + every phrase (a regex) is in the message."""
    assert issubclass(exc_type, SteerlibError)
    with pytest.raises(exc_type) as ei:
        yield ei
    assert isinstance(ei.value, SteerlibError)
    msg = str(ei.value)
    for p in phrases:
        assert re.search(p, msg, flags=re.IGNORECASE | re.DOTALL), f"{p!r} not in {msg!r}"
    MESSAGES.append(f"{type(ei.value).__name__}: {msg}".replace("\n", " | "))


@pytest.fixture(scope="module", autouse=True)
def _write_messages() -> Iterator[None]:
    yield
    out = os.environ.get("STEERLIB_ERROR_LOG")
    if out:
        Path(out).write_text("\n".join(MESSAGES) + "\n")


# --------------------------------------------------------------------------------------------
# Models and fitted steerers, built once
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama():
    t = build_tiny("llama")
    return t, SteerableModel(t.model, t.processor)


@pytest.fixture(scope="module")
def llava():
    t = build_tiny("llava")
    return t, SteerableModel(t.model, t.processor)


def _llama_variant(t, **changes) -> SteerableModel:
    cfg = tf.LlamaConfig(**{**t.model.config.to_dict(), **changes})
    return SteerableModel(tf.LlamaForCausalLM(cfg).eval(), t.tokenizer)


def _items(n: int = 6, behaviors: tuple[str, ...] = ("harmful", "benign")) -> list[ContrastiveItem]:
    return [ContrastiveItem(prompt=f"Question {i} about the {'cat' if i % 2 else 'weather'}",
                            positive="I cannot help with that.", negative="Sure, here is how.",
                            behavior=behaviors[i % len(behaviors)]) for i in range(n)]


@pytest.fixture(scope="module")
def saved(llama, tmp_path_factory) -> Path:
    """A MeanSteer fitted on tiny llama and saved."""
    _, sm = llama
    path = tmp_path_factory.mktemp("saved") / "mean"
    MeanSteer(LAYER, alpha=2.0, progress=False).fit(sm, _items()).save_pretrained(path)
    return path


@pytest.fixture()
def copy_of_saved(saved, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    return dst


def _edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "steerer.json").read_text())
    for k, v in changes.items():
        if "." in k:
            a, b = k.split(".")
            meta[a][b] = v
        elif v is _DELETE:
            meta.pop(k)
        else:
            meta[k] = v
    (path / "steerer.json").write_text(json.dumps(meta))


_DELETE = object()


# --------------------------------------------------------------------------------------------
# Architecture and layers
# --------------------------------------------------------------------------------------------

class _Mystery(nn.Module):
    """A model with an unregistered model_type and no findable decoder stack."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="mystery_lm")
        self.stack = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))


def test_unknown_architecture(llama):
    t, _ = llama
    with raises(UnknownArchitectureError, "Unknown architecture", "mystery_lm", r"register_adapter\(Adapter\("):
        SteerableModel(_Mystery(), t.tokenizer)
    with raises(UnknownArchitectureError, "Unknown architecture", "Known families: .*llama", "register_adapter"):
        get_adapter(_Mystery(), fallback=False)


def test_layer_index_out_of_range(llama):
    _, sm = llama
    b = sm.encode(["hello"])
    with raises(LayerIndexError, "Layer 3 is out of range", "3 decoder layers", r"use 0\.\.2"):
        sm.forward(b, Intervention.build(3, torch.ones(64)))
    with raises(LayerIndexError, "Layer 7 is out of range", r"use 0\.\.2"):
        sm.read(b, [0, 7])
    with raises(LayerIndexError, "Layer 5 is out of range", r"use 0\.\.2"):
        MeanSteer(5, progress=False).fit(sm, _items())
    with raises(LayerIndexError, "Layer 9 is out of range", r"use 0\.\.2"):
        L2S(1, input_layer=9, progress=False).fit(sm, _items())


def test_layer_index_negative(llama):
    _, sm = llama
    b = sm.encode(["hello"])
    with raises(LayerIndexError, "Layer -1 is negative", "not count layers from the end", r"Use 0\.\.2", "2 for the last"):
        sm.forward(b, Intervention.build(-1, torch.ones(64)))
    with raises(LayerIndexError, "Layer -2 is negative", r"Use 0\.\.2"):
        MeanSteer(-2).fit(sm, _items())


@pytest.mark.parametrize("bad", [1.5, "1", True, None, [1.0]])
def test_layer_index_not_an_integer(llama, bad):
    _, sm = llama
    with raises(LayerIndexError, "is not an integer", "0-based ints", r"use 0\.\.2"):
        sm.forward(sm.encode(["hello"]), Intervention.build(bad, torch.ones(64)))
    with raises(LayerIndexError, "is not an integer"):
        check_layers(bad, 3)
    # numpy / python integers of any width are integers
    import numpy as np

    assert check_layers(np.int64(2), 3) == (2,)


# --------------------------------------------------------------------------------------------
# Vectors, alpha, batch sizes, positions
# --------------------------------------------------------------------------------------------

def test_hidden_size_mismatch_between_vector_and_model(llama):
    _, sm = llama
    b = sm.encode(["hello", "world"])
    with raises(ShapeMismatchError, r"shape \(32,\)", r"needs \[64\] or \[batch, 64\]", "hidden size 64",
                "fitted on another model"):
        sm.forward(b, Intervention.build(LAYER, torch.ones(32)))
    with raises(ShapeMismatchError, r"shape \(2, 48\)", "hidden size 64"):
        sm.generate(b, Intervention.build(LAYER, torch.ones(2, 48)), max_new_tokens=1)
    with raises(ShapeMismatchError, r"shape \(2, 3, 64\)"):
        sm.forward(b, Intervention.build(LAYER, torch.ones(2, 3, 64)))


def test_mismatched_batch_size_between_vectors_and_inputs(llama, llava):
    _, sm = llama
    b = sm.encode(["hello", "world"])
    with raises(ShapeMismatchError, "has 3 rows but the batch has 2 inputs", "one row per input"):
        sm.forward(b, Intervention.build(LAYER, torch.ones(3, 64)))
    with raises(ShapeMismatchError, "has 3 rows but the batch has 2 inputs"):
        sm.generate(b, Intervention.build([0, 1], {0: torch.ones(64), 1: torch.ones(3, 64)}), max_new_tokens=1)
    with raises(ShapeMismatchError, "1 completions for 2 prompts", "one per prompt"):
        sm.encode(["hello", "world"], completions=["x"])
    _, sv = llava
    with raises(ShapeMismatchError, "1 image lists for 2 prompts", r"one list \(maybe empty\) per prompt"):
        sv.encode(["a", "b"], [[tiny_image(1)]])
    with raises(InputError, "same number of images", "batch them separately"):
        sv.encode(["a", "b"], [[tiny_image(1)], [tiny_image(1), tiny_image(2)]])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_infinite_vector(llama, bad):
    _, sm = llama
    b = sm.encode(["hello", "world"])
    v = torch.ones(2, 64)
    v[1, 5] = bad
    with raises(NonFiniteError, "steering vector for layer 1 contains NaN or infinite values", "check how it was computed"):
        sm.forward(b, Intervention.build(LAYER, v))
    with raises(NonFiniteError, "NaN or infinite"):
        sm.generate(b, Intervention.build(LAYER, v[1]), max_new_tokens=1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), "strong", None])
def test_alpha_not_finite(llama, saved, bad):
    _, sm = llama
    b = sm.encode(["hello"])
    with raises(NonFiniteError, "alpha must be a finite number", "pass a real number"):
        sm.forward(b, Intervention.build(LAYER, torch.ones(64), alpha=bad))
    st = Steerer.from_pretrained(saved, model=sm)
    if bad is not None:  # alpha=None means "the steerer's own alpha"
        with raises(NonFiniteError, "alpha must be a finite number"):
            st.generate(sm, ["hello"], alpha=bad, max_new_tokens=1)
    with raises(NonFiniteError, "alpha must be a finite number"):
        MeanSteer(LAYER, alpha=bad, progress=False).fit(sm, _items())


def test_unknown_position_name(llama):
    _, sm = llama
    with raises(PositionError, "Unknown position 'prmpt'", "Use one of: all, prompt, generated, last_prompt, image, text"):
        Positions("prmpt")
    with raises(PositionError, "Unknown position 'everywhere'", "Use one of"):
        Intervention.build(LAYER, torch.ones(64), positions="everywhere")
    with raises(PositionError, "positions must be a name or a Positions", "int"):
        Intervention.build(LAYER, torch.ones(64), positions=3)
    with raises(PositionError, "Unknown position 'nope'", "Use one of"):
        MeanSteer(LAYER, positions="nope", progress=False).fit(sm, _items())
    with raises(PositionError, "Unknown reduction 'middle'", "use one of last_prompt"):
        sm.read(sm.encode(["hello"]), [LAYER], reduce="middle")
    with raises(PositionError, "positions='image' but the batch has no image tokens", "pass the images",
                "positions='text' or 'all'"):
        sm.forward(sm.encode(["hello"]), Intervention.build(LAYER, torch.ones(64), positions="image"))


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

def test_images_given_to_a_text_only_model(llama):
    _, sm = llama
    with raises(InputError, "Images were given", "text-only model", "Drop the images or load a vision-language model"):
        sm.encode(["Describe the picture."], [[tiny_image(1)]])
    st = P2S(LAYER, progress=False).fit(sm, [])
    item = ContrastiveItem(prompt="Describe.", positive="A cat.", negative="A dog.", images=(tiny_image(2),))
    with raises(InputError, "text-only model"):
        st.vectors(sm, [item])


def test_vlm_prompt_without_its_image(llava):
    _, sv = llava
    with raises(InputError, "Prompt 0 contains an image placeholder but no image was given",
                r"pass its image \(images=\[\[img\], \.\.\.\]\) or remove the placeholder"):
        sv.encode(["<image>\nWhat is in this picture?"])
    with raises(InputError, "Prompt 1 contains an image placeholder but no image"):
        sv.encode(["Hello there.", "<image>\nDescribe it."], [[], []])


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    tiny_image(3, size=64).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "truncated", "corrupt", "text"])
def test_unreadable_truncated_or_corrupt_image_file(llava, tmp_path, kind):
    _, sv = llava
    p = tmp_path / "img.png"
    if kind == "folder":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":
        p.write_bytes(_png_bytes()[: len(_png_bytes()) // 2])
    elif kind == "corrupt":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind == "text":
        p.write_text("this is not an image")
    if kind == "missing":
        phrases = ["Image file not found", "Check the image folder or the path"]
    elif kind == "folder":
        phrases = ["is a folder, not an image file", "give the path of the image itself"]
    else:
        phrases = [f"Cannot read image {re.escape(str(p))}", "truncated or not an image; replace it"]
    with raises(DataFileError, *phrases):
        load_image(p)
    with raises(DataFileError, *phrases):
        sv.encode(["Describe the image."], [[p]])
    assert load_image(tiny_image(1)).mode == "RGB"  # a good image still loads


# --------------------------------------------------------------------------------------------
# Training data
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [MeanSteer, MeanSteerBA, L2S])
def test_empty_training_set(llama, method):
    _, sm = llama
    with raises(DataError, "training set is empty", "pass at least one ContrastiveItem"):
        method(LAYER, progress=False).fit(sm, [])
    with raises(DataError, "P2S item list is empty", "at least one ContrastiveItem"):
        extract_p2s(sm, [], LAYER, progress=False)


def test_single_class_training_set(llama):
    """Where a method needs two classes, one class raises.

    Decision: L2S with ``class_balance=True`` averages its loss per behaviour label, so it needs at
    least two labels (``min_behaviors=2``); a single class is almost always a data mistake there
    (the paper balances harmful / expert / benign). Plain L2S and Mean-S are fine with one class
    (Mean-S is the mean of one class's vectors by design; ``behaviors=`` then restricts it), but
    norm equalisation to a reference class needs that class, and L2S needs two items.
    """
    _, sm = llama
    one_class = _items(6, behaviors=("harmful",))
    with raises(DataError, "class_balance=True needs at least 2 behaviour labels", r"\['harmful'\]",
                "add items of the other class", "class_balance=False"):
        L2S(LAYER, class_balance=True, epochs=1, progress=False).fit(sm, one_class)
    with raises(DataError, "class_balance=True needs at least 2 behaviour labels"):
        L2S(LAYER, class_balance=True, epochs=1, progress=False).fit_features(torch.randn(6, 64), torch.randn(6, 64),
                                                                          ["benign"] * 6)
    with raises(DataError, "L2S needs at least 2 training items, got 1", "add training items"):
        L2S(LAYER, epochs=1, progress=False).fit(sm, one_class[:1])
    with raises(DataError, "Norm reference behaviour 'benign' is not among the labels",
                "pass equalize_norms_to= one of these labels, or None"):
        MeanSteer(LAYER, equalize_norms_to="benign", progress=False).fit(sm, one_class)
    with raises(DataError, r"No training item has a behaviour in \['benign'\]", "check the labels"):
        MeanSteer(LAYER, behaviors=["benign"], progress=False).fit(sm, one_class)
    # one class is fine where nothing is balanced across classes
    L2S(LAYER, epochs=1, hidden=4, progress=False).fit(sm, one_class)
    MeanSteer(LAYER, progress=False).fit(sm, one_class)


def test_items_without_completions_given_to_p2s(llama):
    _, sm = llama
    st = P2S(LAYER, progress=False).fit(sm, [])
    with raises(DataError, r"Item 0 \(id '[0-9a-f]+'\) of the input list has no positive/negative completion",
                "Build items with positive= and negative="):
        st.vectors(sm, ["a plain prompt"])
    half = ContrastiveItem(prompt="q", positive="only the good one")
    with raises(DataError, "Item 1 .* has no positive/negative completion", "positive= and negative="):
        st.vectors(sm, [_items(1)[0], half])
    with raises(DataError, "of the training set has no positive/negative completion"):
        MeanSteer(LAYER, progress=False).fit(sm, [half])
    with raises(DataError, "P2S item list has no positive/negative completion"):
        extract_p2s(sm, [half], LAYER, progress=False)


# --------------------------------------------------------------------------------------------
# Loaders: malformed JSON lines and CSV name the file and line
# --------------------------------------------------------------------------------------------

def test_malformed_json_lines_in_a_loader(tmp_path):
    f = tmp_path / "coco_pope_random.json"
    good = json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"})
    f.write_text(good + "\n\n" + '{"question_id": 2, "image": "b.jpg", "text": "Is there a dog?", "label": "no"\n')
    with raises(DataFileError, re.escape(f"{f}:3: malformed JSON line"), "fix or remove that line"):
        L.load_pope(f, tmp_path)
    d = tmp_path / "dna.jsonl"
    d.write_text('{"prompt": "p", "intents": ["S001"]}\n["not", "an", "object"]\n')
    with raises(DataFileError, re.escape(f"{d}:2: expected a JSON object, got list")):
        L.load_donotanswer(d)
    d.write_text('{"prompt": "p"}\n')
    with raises(DataFileError, re.escape(f"{d}:1: missing key(s) 'intents'"), r"Each record needs \['prompt', 'intents'\]"):
        L.load_donotanswer(d)
    d.write_bytes(b'{"prompt": "caf\xe9", "intents": []}\n')
    with raises(DataFileError, re.escape(f"{d}: not UTF-8 text"), "Re-save the file as UTF-8"):
        L.load_donotanswer(d)


def test_malformed_csv_in_a_loader(tmp_path):
    f = tmp_path / "safebench.csv"
    header = "dataset,category_id,task_id,category_name,question,instruction\n"
    f.write_text(header + "SafeBench,1,1,Illegal Activity,How?,Steps.\nSafeBench,1,2,Illegal Activity,How, really?,Steps.\n")
    with raises(DataFileError, re.escape(f"{f}:3: CSV row has 7 fields, the header has 6"),
                "Quote fields that contain commas"):
        L.load_figstep(f)
    f.write_text(header + "SafeBench,1,x,Illegal Activity,How?,Steps.\n")
    with raises(DataFileError, re.escape(f"{f}:2: category_id and task_id must be integers")):
        L.load_figstep(f)
    f.write_text("dataset,question\nSafeBench,How?\n")
    with raises(DataFileError, re.escape(f"{f}:1: CSV header lacks column(s)"), "The file must have"):
        L.load_figstep(f)
    h = tmp_path / "harmbench.csv"
    h.write_text('Behavior\n"Write a phishing email\n')
    with raises(DataFileError, re.escape(str(h)), "malformed CSV row|fields"):
        L.load_harmbench(h)


# --------------------------------------------------------------------------------------------
# Persistence: overwrite, pickle, metadata, corrupt files
# --------------------------------------------------------------------------------------------

def test_save_target_exists_without_overwrite(llama, saved, tmp_path):
    _, sm = llama
    st = Steerer.from_pretrained(saved, model=sm)
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    with raises(PersistenceError, "already exists", "pass overwrite=True to replace it, or choose another path"):
        st.save_pretrained(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    (tmp_path / "afile").write_text("x")
    with raises(PersistenceError, "exists and is not a folder", "choose another path"):
        st.save_pretrained(tmp_path / "afile", overwrite=True)
    st.save_pretrained(tmp_path / "new")
    st.save_pretrained(tmp_path / "new", overwrite=True)  # explicit overwrite works


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".bin", ".ckpt"])
def test_pickle_or_pt_given_to_from_pretrained(tmp_path, suffix):
    p = tmp_path / f"steerer{suffix}"
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        torch.save({"vector_": torch.ones(64)}, p)
    else:
        p.write_bytes(pickle.dumps({"vector_": [1.0] * 64}))
    with raises(PersistenceError, "pickle-based file", "unpickling can run arbitrary code",
                "save it with save_pretrained"):
        Steerer.from_pretrained(p)
    with raises(PersistenceError, "pickle-based file"):
        MeanSteer.from_pretrained(str(p))


def test_folder_with_pickle_files_only(tmp_path):
    d = tmp_path / "hub_download"
    d.mkdir()
    torch.save({"vector_": torch.ones(64)}, d / "pytorch_model.bin")
    with raises(PersistenceError, "missing steerer.json", r"pickle-based files \['pytorch_model.bin'\]",
                "steerlib refuses to load", "Save with save_pretrained"):
        Steerer.from_pretrained(d)
    with raises(PersistenceError, "No saved steerer at", "expected a folder written by save_pretrained"):
        Steerer.from_pretrained(tmp_path / "nothing_here")


def test_pickle_bytes_inside_the_saved_files(copy_of_saved):
    (copy_of_saved / "steerer.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with raises(PersistenceError, "not a readable safetensors file", "save the steerer again"):
        Steerer.from_pretrained(copy_of_saved)
    (copy_of_saved / "steerer.json").write_bytes(pickle.dumps({"a": 1}))
    with raises(PersistenceError, "not valid JSON", "the folder is corrupt, save the steerer again"):
        Steerer.from_pretrained(copy_of_saved)


def test_metadata_library_format_version_too_new(copy_of_saved):
    _edit_meta(copy_of_saved, format_version=99, library_version="9.0.0")
    with raises(CompatibilityError, r"saved by steerlib 9\.0\.0 \(format 99\)", "reads format <= 1", "Upgrade steerlib"):
        Steerer.from_pretrained(copy_of_saved)


@pytest.mark.parametrize(("changes", "phrases"), [
    ({"format_version": "one"}, ["invalid format_version 'one'", "save the steerer again"]),
    ({"library": "other"}, ["not written by steerlib's save_pretrained", "save the steerer with save_pretrained"]),
    ({"method": "teleport"}, ["unknown steering method 'teleport'", "known methods: .*mean", "Upgrade steerlib"]),
    ({"params": _DELETE}, ["is corrupt", "KeyError", "Save the steerer again"]),
    ({"params": {"layer": 1, "warp": 9}}, ["is corrupt", "TypeError", "Save the steerer again"]),
    ({"model": "llama"}, ["is corrupt", "Save the steerer again"]),
])
def test_metadata_corrupt_steerer_json(copy_of_saved, changes, phrases):
    _edit_meta(copy_of_saved, **changes)
    with raises(PersistenceError, *phrases):
        Steerer.from_pretrained(copy_of_saved)


@pytest.mark.parametrize("content", [b'{"format_version": 1, "library": "steer', b"", b"[1, 2, 3]", b"\x80\x04garbage"])
def test_corrupt_steerer_json(copy_of_saved, content):
    (copy_of_saved / "steerer.json").write_bytes(content)
    with raises(PersistenceError, re.escape(str(copy_of_saved / "steerer.json")), "save the steerer again"):
        Steerer.from_pretrained(copy_of_saved)


def test_corrupt_or_truncated_safetensors(copy_of_saved):
    f = copy_of_saved / "steerer.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with raises(PersistenceError, "steerer.safetensors is not a readable safetensors file", "save the steerer again"):
        Steerer.from_pretrained(copy_of_saved)
    save_file({"something_else": torch.ones(3)}, str(f))  # readable, but not this steerer's tensors
    with raises(PersistenceError, "is corrupt", "do not describe a MeanSteer", "Save the steerer again"):
        Steerer.from_pretrained(copy_of_saved)
    (copy_of_saved / "steerer.safetensors").unlink()
    with raises(PersistenceError, "missing steerer.safetensors", "Save with save_pretrained"):
        Steerer.from_pretrained(copy_of_saved)


def test_load_steerer_fitted_on_another_model_type(llama, saved):
    t = build_tiny("qwen2")  # same hidden size and layer count, another architecture
    other = SteerableModel(t.model, t.processor)
    with raises(CompatibilityError, "Model-type mismatch", "model_type 'llama'", "'qwen2'",
                "Vectors do not transfer between architectures; fit it on this model"):
        Steerer.from_pretrained(saved, model=other)
    st = Steerer.from_pretrained(saved)  # without a model: loads, and is checked when used
    with raises(CompatibilityError, "Model-type mismatch"):
        st.generate(other, ["hello"], max_new_tokens=1)


def test_load_steerer_fitted_on_another_layer_count(llama, saved):
    t, _ = llama
    two = _llama_variant(t, num_hidden_layers=2)
    with raises(CompatibilityError, "Layer-count mismatch", "fitted on a 3-layer model", "this one has 2 layers",
                "Fit it on this model"):
        Steerer.from_pretrained(saved, model=two)


def test_load_steerer_fitted_on_another_hidden_size(llama, saved):
    t, _ = llama
    narrow = _llama_variant(t, hidden_size=32, head_dim=8)
    with raises(CompatibilityError, "Hidden-size mismatch", "hidden size 64", "model's hidden size is 32",
                "Fit it on this model"):
        Steerer.from_pretrained(saved, model=narrow)


@pytest.mark.parametrize(("key", "value", "phrase"), [
    ("model.model_type", "qwen2", "Model-type mismatch"),
    ("model.hidden_size", 128, "Hidden-size mismatch"),
    ("model.num_layers", 12, "Layer-count mismatch"),
])
def test_metadata_checked_on_load(llama, copy_of_saved, key, value, phrase):
    """The metadata in steerer.json is what the check reads (model type, hidden size, layer count)."""
    _, sm = llama
    _edit_meta(copy_of_saved, **{key: value})
    with raises(CompatibilityError, phrase, "(?i)fit it on this model"):
        Steerer.from_pretrained(copy_of_saved, model=sm)


def test_loading_into_the_wrong_class(saved):
    with raises(PersistenceError, "holds a MeanSteer, not a L2S", "MeanSteer.from_pretrained"):
        L2S.from_pretrained(saved)
    assert type(MeanSteer.from_pretrained(saved)) is MeanSteer


# --------------------------------------------------------------------------------------------
# Atomic persistence
# --------------------------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _crashing_save_file(tensors, filename, *args, **kwargs):
    """Write half a file, then die like a full disk or a killed process."""
    Path(filename).write_bytes(b"\x00" * 16)
    raise OSError(28, "No space left on device (simulated)")


def test_crash_during_first_save_leaves_nothing(llama, saved, tmp_path, monkeypatch):
    _, sm = llama
    st = Steerer.from_pretrained(saved, model=sm)
    monkeypatch.setattr(persistence, "save_file", _crashing_save_file)
    with pytest.raises(OSError, match="simulated"):
        st.save_pretrained(tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == []  # no target, no temporary folder


def test_crash_during_overwrite_keeps_the_previous_folder(llama, saved, tmp_path, monkeypatch):
    _, sm = llama
    target = tmp_path / "out"
    shutil.copytree(saved, target)
    before = _snapshot(target)
    st = MeanSteer(LAYER, alpha=5.0, progress=False).fit(sm, _items(4))
    monkeypatch.setattr(persistence, "save_file", _crashing_save_file)
    with pytest.raises(OSError, match="simulated"):
        st.save_pretrained(target, overwrite=True)
    assert _snapshot(target) == before  # the previous save is intact
    assert sorted(os.listdir(tmp_path)) == ["out"]  # and no temporary folder is left
    assert Steerer.from_pretrained(target, model=sm).alpha == 2.0
    monkeypatch.undo()
    st.save_pretrained(target, overwrite=True)  # once the disk is fine again, it works
    assert Steerer.from_pretrained(target, model=sm).alpha == 5.0
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_crash_while_swapping_folders_restores_the_previous_one(llama, saved, tmp_path, monkeypatch):
    _, sm = llama
    target = tmp_path / "out"
    shutil.copytree(saved, target)
    before = _snapshot(target)
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # old -> aside worked; new -> target dies
            raise OSError("simulated crash during rename")
        return real_replace(src, dst)

    st = MeanSteer(LAYER, alpha=5.0, progress=False).fit(sm, _items(4))
    monkeypatch.setattr(persistence, "exchange", lambda a, b: False)  # the fallback without RENAME_EXCHANGE
    monkeypatch.setattr(persistence.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        st.save_pretrained(target, overwrite=True)
    monkeypatch.undo()
    assert _snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_write_text_atomic_crash_keeps_old_text(tmp_path, monkeypatch):
    f = tmp_path / "cache.json"
    persistence.write_text_atomic(f, '{"v": 1}')

    def boom(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(persistence.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        persistence.write_text_atomic(f, '{"v": 2}')
    monkeypatch.undo()
    assert f.read_text() == '{"v": 1}'
    assert sorted(os.listdir(tmp_path)) == ["cache.json"]
