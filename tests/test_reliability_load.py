"""Loading a saved steerer: checked against the model and against itself before anything is
used (shapes and dtypes from the safetensors header before any tensor is read, finiteness of
every tensor and of steerer.json, a bounded steerer.json, special files and symlinks leaving the
folder refused), plus a property-based reader test over corrupted folders."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import steerlib.persistence as persistence
from steerlib import SteerableModel
from steerlib.errors import CompatibilityError, NonFiniteError, PersistenceError, SpecialFileError, SteerlibError
from steerlib.steerers import L2S, MeanSteer, Steerer
from steerlib.testing import build_tiny
from steerlib.testing.bad_inputs import toy_items as _items

D = 64  # tiny llama's hidden size


@pytest.fixture(scope="module")
def sm() -> SteerableModel:
    t = build_tiny("llama")
    return SteerableModel(t.model, t.processor)


@pytest.fixture(scope="module")
def saved(sm, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saved")
    MeanSteer(1, alpha=2.0, progress=False).fit(sm, _items()).save_pretrained(root / "mean")
    L2S(1, hidden=8, epochs=3, progress=False).fit(sm, _items()).save_pretrained(root / "l2s")
    return {"mean": root / "mean", "l2s": root / "l2s"}


@pytest.fixture()
def mean_copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved["mean"], tmp_path / "mean"))


@pytest.fixture()
def l2s_copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved["l2s"], tmp_path / "l2s"))


def _meta(p: Path) -> dict:
    return json.loads((p / "steerer.json").read_text())


def _put_meta(p: Path, meta: dict) -> None:
    (p / "steerer.json").write_text(json.dumps(meta))  # allow_nan: writes NaN / Infinity literals


# ---------------------------------------------------------------------- special files ---
@pytest.mark.parametrize("name", ["steerer.json", "steerer.safetensors"])
def test_fifo_in_place_of_a_saved_file_is_named_as_such(mean_copy, name):
    (mean_copy / name).unlink()
    os.mkfifo(mean_copy / name)
    with pytest.raises(SpecialFileError, match=f"{name} .* is a FIFO .*not a regular file"):
        Steerer.from_pretrained(mean_copy)  # returns at once: never blocks on the pipe


def test_symlinks_leaving_the_folder_are_refused_inside_ones_followed(mean_copy, tmp_path, sm):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(mean_copy / "steerer.safetensors", outside)
    (mean_copy / "steerer.safetensors").symlink_to(outside)
    with pytest.raises(PersistenceError, match="symlink to .*outside the folder"):
        Steerer.from_pretrained(mean_copy)
    (mean_copy / "steerer.safetensors").unlink()
    (mean_copy / "steerer.safetensors").symlink_to("/dev/zero")
    with pytest.raises(PersistenceError, match="outside the folder"):
        Steerer.from_pretrained(mean_copy)
    (mean_copy / "steerer.safetensors").unlink()
    shutil.move(outside, mean_copy / "data.bin.safetensors")
    (mean_copy / "steerer.safetensors").symlink_to("data.bin.safetensors")  # inside: fine
    assert Steerer.from_pretrained(mean_copy, model=sm).alpha == 2.0
    link = tmp_path / "link-to-folder"
    link.symlink_to(mean_copy)  # the folder given may itself be a link
    assert Steerer.from_pretrained(link, model=sm).alpha == 2.0


def test_steerer_json_size_is_bounded(mean_copy):
    with open(mean_copy / "steerer.json", "r+b") as f:
        f.truncate(2**30)  # a sparse 1 GiB file: refused from its size, never read
    with pytest.raises(PersistenceError, match="more than the .* bytes"):
        Steerer.from_pretrained(mean_copy)


# ---------------------------------------------------------------------- JSON state ------
@pytest.mark.parametrize("edit, phrase", [
    (lambda m: m["state"].__setitem__("gate_norm", math.inf), "not a finite number|not valid JSON"),
    (lambda m: m["state"].__setitem__("gate_norm", -1.0), "gate_norm is -1.0"),
    (lambda m: m["state"].__setitem__("gate", 3.0), "gate is 3.0"),
    (lambda m: m.__setitem__("alpha", math.nan), "not valid JSON"),
    (lambda m: m["params"].__setitem__("hidden", -1), "hidden must be a positive int"),
    (lambda m: m["params"].__setitem__("lr", "fast"), "lr must be a finite number"),
    (lambda m: m["model"].__setitem__("hidden_size", "64"), "hidden_size"),
    (lambda m: m["model"].__setitem__("num_layers", 0), "num_layers"),
    (lambda m: m.__setitem__("n_items", -3), "n_items"),
])
def test_json_state_is_checked(l2s_copy, edit, phrase):
    meta = _meta(l2s_copy)
    edit(meta)
    _put_meta(l2s_copy, meta)
    with pytest.raises(PersistenceError, match=phrase):
        Steerer.from_pretrained(l2s_copy)


def test_huge_number_and_duplicate_key_in_steerer_json(mean_copy):
    text = (mean_copy / "steerer.json").read_text()
    (mean_copy / "steerer.json").write_text(text.replace('"alpha": 2.0', '"alpha": 1e999'))
    with pytest.raises(PersistenceError, match="overflows"):
        Steerer.from_pretrained(mean_copy)
    (mean_copy / "steerer.json").write_text(text.replace('"alpha": 2.0', '"alpha": 2.0, "alpha": 50.0'))
    with pytest.raises(PersistenceError, match="duplicate key 'alpha'"):
        Steerer.from_pretrained(mean_copy)


# ---------------------------------------------------------------------- tensors ---------
@pytest.mark.parametrize("vector, phrase", [
    (torch.ones(1, D), r"shape \[1, 64\].*\[64\]"),
    (torch.tensor(1.0), r"shape \[\].*\[64\]"),
    (torch.ones(32), r"shape \[32\]"),
])
def test_mean_vector_of_the_wrong_shape_is_refused_at_load(mean_copy, vector, phrase):
    save_file({"vector_": vector}, str(mean_copy / "steerer.safetensors"))
    with pytest.raises(CompatibilityError, match=phrase):
        Steerer.from_pretrained(mean_copy)


def test_l2s_of_another_width_is_refused_at_load(l2s_copy, sm):
    k = 8
    save_file({"encoder_weight_": torch.zeros(k, 32), "encoder_bias_": torch.zeros(k),
               "decoder_weight_": torch.zeros(32, k)}, str(l2s_copy / "steerer.safetensors"))
    with pytest.raises(CompatibilityError, match="encoder_weight_.*hidden size 64"):
        Steerer.from_pretrained(l2s_copy, model=sm)
    save_file({"encoder_weight_": torch.zeros(5, D), "encoder_bias_": torch.zeros(5),
               "decoder_weight_": torch.zeros(D, 5)}, str(l2s_copy / "steerer.safetensors"))
    with pytest.raises(CompatibilityError, match=r"\[8, 64\]"):  # hidden=8 in steerer.json, K=5 in the file
        Steerer.from_pretrained(l2s_copy)


def test_nan_weights_and_integer_dtypes_are_refused(l2s_copy, mean_copy):
    t = persistence.read_safetensors_checked(l2s_copy / "steerer.safetensors")
    t["decoder_weight_"][3, 1] = float("nan")
    save_file(t, str(l2s_copy / "steerer.safetensors"))
    with pytest.raises(NonFiniteError, match="decoder_weight_.*NaN or infinite"):
        Steerer.from_pretrained(l2s_copy)
    save_file({"vector_": torch.ones(D, dtype=torch.int32)}, str(mean_copy / "steerer.safetensors"))
    with pytest.raises(PersistenceError, match="dtype I32"):
        Steerer.from_pretrained(mean_copy)


def _header_file(path: Path, header: dict, data_len: int) -> None:
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + data_len)  # sparse: no disk, no memory


def test_a_2gib_sparse_tensor_file_is_refused_from_its_header(mean_copy, monkeypatch):
    n = 2**29  # 2 GiB of float32
    _header_file(mean_copy / "steerer.safetensors",
                 {"vector_": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}, 4 * n)
    read = []
    real = persistence._read_exact
    monkeypatch.setattr(persistence, "_read_exact", lambda fd, k, *a: read.append(k) or real(fd, k, *a))
    with pytest.raises(CompatibilityError, match=rf"shape \[{n}\]"):
        Steerer.from_pretrained(mean_copy)
    assert sum(read) < 4096  # the 8-byte length and the header, nothing of the data


@pytest.mark.parametrize("header, data_len, phrase", [
    ({"vector_": {"dtype": "F32", "shape": [D], "data_offsets": [0, 4 * D]}}, 2**31, "corrupt or padded"),
    ({"vector_": {"dtype": "F32", "shape": [D], "data_offsets": [0, 4 * D]}}, 10, "claims bytes"),
    ({"vector_": {"dtype": "F32", "shape": [D, 2], "data_offsets": [0, 4 * D]}}, 4 * D, "claims bytes"),
    ({"vector_": {"dtype": "Q4", "shape": [D], "data_offsets": [0, 4 * D]}}, 4 * D, "malformed"),
    ({"vector_": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4, "malformed"),
])
def test_inconsistent_headers(mean_copy, header, data_len, phrase):
    _header_file(mean_copy / "steerer.safetensors", header, data_len)
    with pytest.raises(PersistenceError, match=phrase):
        Steerer.from_pretrained(mean_copy)


def test_header_length_larger_than_the_file(mean_copy):
    (mean_copy / "steerer.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(PersistenceError, match="not a readable safetensors file"):
        Steerer.from_pretrained(mean_copy)


def test_every_builtin_method_declares_its_tensors(sm):
    """The protocol hook, for each registered method that saves tensors: expected_tensors names
    exactly ``_tensors`` (or, for a composite, its components' prefixed tensors)."""
    for method, klass in sorted(Steerer._registry.items()):
        if method == "compose":
            continue
        obj = klass.__new__(klass)
        obj.__init__()
        exp = obj.expected_tensors(D, 3)
        assert set(exp) == set(klass._tensors), method


# ---------------------------------------------------------------------- property ---------
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                        st.lists(st.integers(-3, 100), max_size=3))
META_KEYS = st.sampled_from(["alpha", "layer", "params.layer", "params.hidden", "params.lr", "params.alpha",
                             "params.positions", "params.epochs", "model.hidden_size", "model.num_layers",
                             "state.gate_norm", "state.gate", "n_items", "format_version", "method"])
DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "X"])
SHAPES = st.lists(st.integers(0, 200), max_size=3)

CORRUPTIONS = st.one_of(
    st.tuples(st.just("meta"), META_KEYS, JSON_VALUES),
    st.tuples(st.just("header_len"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("header_entry"), DTYPES, SHAPES, st.integers(0, 5000), st.integers(0, 5000)),
    st.tuples(st.just("value"), st.sampled_from([math.nan, math.inf, -math.inf, 3e38, 0.0]), st.integers(0, 10**6)),
    st.tuples(st.just("truncate"), st.sampled_from(["steerer.json", "steerer.safetensors"]), st.integers(0, 4000)),
    st.tuples(st.just("replace"), st.sampled_from(["steerer.json", "steerer.safetensors"]),
              st.sampled_from(["fifo", "link-out", "dir", "empty", "dup-key"])),
)


def _corrupt(folder: Path, c: tuple, outside: Path) -> None:
    kind = c[0]
    if kind == "meta":
        meta = _meta(folder)
        obj, key = meta, c[1]
        *parents, last = key.split(".")
        for p in parents:
            obj = obj.setdefault(p, {})
        obj[last] = c[2]
        _put_meta(folder, meta)
    elif kind in ("header_len", "header_entry", "value"):
        f = folder / "steerer.safetensors"
        raw = bytearray(f.read_bytes())
        (n,) = struct.unpack("<Q", raw[:8])
        header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
        if kind == "header_len":
            raw[:8] = struct.pack("<Q", c[1])
            f.write_bytes(bytes(raw))
            return
        name = next(k for k in header if k != "__metadata__")
        if kind == "header_entry":
            header[name] = {"dtype": c[1], "shape": c[2], "data_offsets": [c[3], c[4]]}
        else:
            t = persistence.read_safetensors_checked(f)
            flat = t[name].view(-1)
            flat[c[2] % flat.numel()] = c[1]
            save_file(t, str(f))
            return
        h = json.dumps(header).encode()
        f.write_bytes(struct.pack("<Q", len(h)) + h + bytes(data))
    elif kind == "truncate":
        f = folder / c[1]
        f.write_bytes(f.read_bytes()[: c[2]])
    else:
        f = folder / c[1]
        how = c[2]
        if how == "dup-key":
            if c[1] == "steerer.json":
                f.write_text(f.read_text().replace('"alpha":', '"alpha": 1.0, "alpha":', 1))
            return
        f.unlink()
        if how == "fifo":
            os.mkfifo(f)
        elif how == "link-out":
            f.symlink_to(outside)
        elif how == "dir":
            f.mkdir()
        else:
            f.write_bytes(b"")


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.sampled_from(["mean", "l2s"]), corruptions=st.lists(CORRUPTIONS, min_size=1, max_size=2))
def test_corrupted_folders_load_cleanly_or_refuse(saved, sm, tmp_path, which, corruptions):
    """Whatever is done to a saved folder, loading it either raises a SteerlibError, or gives a
    steerer that fits the model and produces finite vectors; never another exception."""
    folder = tmp_path / f"case-{os.urandom(6).hex()}"
    shutil.copytree(saved[which], folder)
    outside = tmp_path / "outside.bin"
    shutil.copy(saved[which] / "steerer.safetensors", outside)
    for c in corruptions:
        try:
            _corrupt(folder, c, outside)
        except (ValueError, KeyError, StopIteration, SteerlibError, OSError, struct.error):
            pass  # the corruption itself did not apply (e.g. the file is already unreadable)
    try:
        st_ = Steerer.from_pretrained(folder, model=sm)
    except SteerlibError:
        return
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert math.isfinite(st_.alpha)
    v = st_.vectors(sm, ["A short prompt"])
    assert v.shape == (1, D) and bool(torch.isfinite(v).all())
