"""llama.cpp control vectors: export static steering vectors to GGUF and import them back.

File layout (the one repeng's ``ControlVector.export_gguf`` writes and llama.cpp's
``common_control_vector_load`` reads):

- ``general.architecture = "controlvector"``;
- ``controlvector.model_hint`` (string: the model type the vectors were made for) and
  ``controlvector.layer_count`` (uint32: the number of direction tensors);
- one 1-D float32 tensor ``direction.{N}`` of length ``n_embd`` per steered layer.

steerlib adds a few ``steerlib.*`` keys (version, method, the alpha baked into the tensors,
positions); llama.cpp ignores them.

Layer numbering
---------------
steerlib's layer ``i`` is the output of decoder block ``i`` (0-based; Hugging Face
``hidden_states[i + 1]``). In GGUF it is written as ``direction.{i}``: **the index is the same**.

Evidence, from llama.cpp's source:

- ``common_control_vector_load_one`` (``common/common.cpp``) parses ``direction.N``, rejects
  ``N == 0`` ("invalid (zero) direction tensor layer index", and the whole file is skipped), and
  adds the tensor into a flat buffer at offset ``n_embd * (N - 1)`` ("layer 1 at [0]");
- ``llama_adapter_cvec::apply`` (``src/llama-adapter.cpp``) fills ``tensors[il]`` for
  ``il = 1 .. n_layer - 1`` from offset ``n_embd * (il - 1)`` ("buffer doesn't have data for
  layer 0"); ``init`` pushes ``nullptr`` for ``tensors[0]``. The two ``- 1`` cancel:
  ``tensors[il]`` holds ``direction.il``;
- every model graph (e.g. ``src/models/llama.cpp``) ends block ``il`` of its
  ``for (int il = 0; il < n_layer; ++il)`` loop with ``cur = build_cvec(cur, il)``, i.e.
  ``cvec->apply_to(ctx, cur, il)``, which adds ``tensors[il]`` to that block's output
  (``l_out``). So ``direction.N`` is added to the output of 0-based block ``N``.

repeng agrees: ``ControlModel`` wraps ``model_layer_list(model)[layer_id]`` and adds
``directions[layer_id]`` to that block's output; ``read_representations`` reads
``hidden_states[layer + 1]`` for its ``layer``; ``export_gguf`` writes ``direction.{layer}``
verbatim; and its default layers ``range(-1, -num_hidden_layers, -1)`` never include 0.

Consequences: the output of block 0 (steerlib layer 0) cannot be expressed in a llama.cpp control
vector, so :func:`export_gguf` refuses it; every other layer maps one to one. llama.cpp adds the
vector to every token it processes (prompt and generated), which is steerlib's
``positions="all"``; its ``--control-vector-scaled FILE S`` multiplies the tensors by ``S``.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..engine import SteerableModel
from ..errors import (
    CompatibilityError,
    DataError,
    LayerIndexError,
    MissingDependencyError,
    PersistenceError,
    ShapeMismatchError,
)
from ..steerers.base import Steerer
from ..steerers.static import StaticVectors, as_vector_dict
from ..intervention import check_scaled_finite
from ..persistence import check_path, open_regular, umask_mode, writing

ARCH = "controlvector"
KEY_MODEL_HINT = f"{ARCH}.model_hint"
KEY_LAYER_COUNT = f"{ARCH}.layer_count"
KEY_STEERLIB_VERSION = "steerlib.version"
KEY_STEERLIB_METHOD = "steerlib.method"
KEY_STEERLIB_ALPHA = "steerlib.alpha"
KEY_STEERLIB_POSITIONS = "steerlib.positions"
KEY_STEERLIB_LAYERS = "steerlib.layer_numbering"
TENSOR_PREFIX = "direction"
LAYER_NUMBERING = ("direction.N is added to the output of decoder block N (0-based; HF hidden_states[N+1]); "
                   "steerlib layer N")

VectorsLike = Union[Mapping[int, Union[Float[Tensor, " d_model"], np.ndarray]], Steerer]


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - gguf is installed in the test environment
        raise MissingDependencyError(
            "Reading or writing llama.cpp control vectors needs the 'gguf' package: pip install gguf "
            "(or pip install 'steerlib[demo]')."
        ) from e
    return gguf


def tensor_name(layer: int) -> str:
    """The GGUF tensor name of steerlib layer ``layer`` (the same index: ``direction.{layer}``)."""
    return f"{TENSOR_PREFIX}.{int(layer)}"


def layer_from_tensor_name(name: str) -> int:
    """The steerlib layer of a ``direction.{N}`` tensor (``N``); raises PersistenceError otherwise."""
    head, _, tail = name.partition(".")
    if head != TENSOR_PREFIX or not tail.isdigit():
        raise PersistenceError(
            f"Tensor {name!r} is not a control-vector direction: llama.cpp control vectors hold only tensors named "
            "'direction.<layer>' (e.g. 'direction.12'). Is this a model file rather than a control vector?"
        )
    return int(tail)


# ---------------------------------------------------------------------- StaticVectors ----
# ---------------------------------------------------------------------- export -----------
def export_gguf(steerer_or_vectors: VectorsLike, path: str | os.PathLike[str], *, model_hint: str,
                alpha: float | None = None, overwrite: bool = False) -> Path:
    """Write static steering vectors as a llama.cpp control vector (GGUF), atomically.

    Args:
        steerer_or_vectors: a fitted :class:`~steerlib.steerers.MeanSteer` /
            :class:`~steerlib.steerers.MeanSteerBA`, a :class:`StaticVectors`, or a dict
            ``{layer: vector [d_model]}`` in steerlib's layer numbering (output of decoder block
            ``layer``). Input-dependent steerers (P2S, Norm-Rnd, L2S) have no single vector and are
            refused.
        path: the ``.gguf`` file to write.
        model_hint: the model the vectors are for (written as ``controlvector.model_hint``; repeng
            writes the Hugging Face ``model_type``, e.g. ``"llama"``).
        alpha: baked into the tensors (``direction = alpha * vector``), so that llama.cpp's
            ``--control-vector FILE`` (strength 1) steers like ``steerer.generate``. Default: the
            steerer's own ``alpha`` (1.0 for a dict).
        overwrite: replace an existing file (otherwise PersistenceError).

    Returns:
        The path written. Layer ``i`` becomes tensor ``direction.{i}`` (see the module docstring);
        layer 0 cannot be expressed in llama.cpp and raises :class:`LayerIndexError`.
    """
    vecs, default_alpha, positions, method = _collect(steerer_or_vectors)
    a = default_alpha if alpha is None else alpha
    if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(float(a)):
        raise DataError(f"alpha must be a finite number, got {a!r}.")
    a = float(a)
    if not isinstance(model_hint, str) or not model_hint.strip():
        raise DataError("model_hint must be a non-empty string naming the model, e.g. its model_type 'llama'.")
    if 0 in vecs:
        raise LayerIndexError(
            "llama.cpp cannot steer layer 0 (the output of decoder block 0): it rejects a 'direction.0' tensor and "
            "skips the whole file. Steer (refit at) a layer >= 1, or drop layer 0 from the dict."
        )
    widths = {int(v.shape[0]) for v in vecs.values()}
    if len(widths) != 1:
        raise ShapeMismatchError(
            f"The vectors have different lengths {sorted(widths)}; a control vector needs one hidden size for every "
            "layer. Were they made on different models?"
        )
    for layer, v in vecs.items():  # the file holds float32: alpha * vector must fit it
        check_scaled_finite(v, a, torch.float32, f"the vector for layer {layer}")
    if positions != "all":
        warnings.warn(
            f"The steerer adds its vector at positions={positions!r}, but llama.cpp adds a control vector at every "
            "token (steerlib's positions='all'); the exported file will steer more positions than the steerer does.",
            UserWarning, stacklevel=2,
        )
    gguf = _require_gguf()
    with writing(path, "export the control vector to") as target:
        return _write_gguf(gguf, target, vecs, a, model_hint, method, positions, overwrite)


def _write_gguf(gguf: Any, target: Path, vecs: dict[int, Tensor], a: float, model_hint: str, method: str,
                positions: str, overwrite: bool) -> Path:
    """Write the file through a temporary sibling and a rename (inside :func:`writing`)."""
    if target.is_dir():
        raise PersistenceError(f"{target} is a folder; give the path of a .gguf file to write.")
    if target.exists() and not overwrite:
        raise PersistenceError(f"{target} already exists; pass overwrite=True to replace it, or choose another path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    from ..version import __version__

    try:
        writer = gguf.GGUFWriter(str(tmp), ARCH, use_temp_file=False)
        writer.add_string(KEY_MODEL_HINT, model_hint)
        writer.add_uint32(KEY_LAYER_COUNT, len(vecs))
        writer.add_string(KEY_STEERLIB_VERSION, __version__)
        writer.add_string(KEY_STEERLIB_METHOD, method)
        writer.add_float32(KEY_STEERLIB_ALPHA, a)
        writer.add_string(KEY_STEERLIB_POSITIONS, positions)
        writer.add_string(KEY_STEERLIB_LAYERS, LAYER_NUMBERING)
        for layer in sorted(vecs):
            data = (vecs[layer] * a).to(torch.float32).numpy()
            writer.add_tensor(tensor_name(layer), np.ascontiguousarray(data, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, umask_mode("file"))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _collect(obj: VectorsLike) -> tuple[dict[int, Tensor], float, str, str]:
    """(vectors by layer, default alpha, positions, method) of whatever can be exported."""
    if isinstance(obj, Mapping):
        return as_vector_dict(obj), 1.0, "all", "dict"
    if isinstance(obj, Steerer):
        vecs = obj.static_vectors()
        if vecs is not None:
            return as_vector_dict(vecs), float(obj.alpha), str(obj.positions), obj.method
        if not obj.adds_vectors:
            raise PersistenceError(
                f"{type(obj).__name__} (method {obj.method!r}) steers with no vector (none, or a prompt edit), so there "
                "is nothing to write to a control vector. Export a MeanSteer, MeanSteerBA, StaticVectors or "
                "{layer: vector} dict."
            )
        raise PersistenceError(
            f"{type(obj).__name__} (method {obj.method!r}) has no static vectors: it computes a different vector for "
            "every input (L2S, P2S, classify-then-steer), decides per input whether to steer (conditional), or "
            "ablates a direction (ablate, ablate_add), and a llama.cpp control vector can only add one fixed vector "
            "per layer for all inputs. Only static vectors can be exported: fit a MeanSteer, PCADiff, PCACenter or "
            "probe on the same items and export that, or pass a {layer: vector} dict."
        )
    raise DataError(
        f"export_gguf takes a MeanSteer, MeanSteerBA, StaticVectors or a dict {{layer: vector}}, got "
        f"{type(obj).__name__}."
    )


# ---------------------------------------------------------------------- import -----------
def _field_value(reader: Any, key: str) -> Any:
    """A scalar or string metadata value, or None when absent (works across gguf versions)."""
    field = reader.get_field(key)
    if field is None or not len(field.parts):
        return None
    if hasattr(field, "contents"):
        return field.contents()
    last = field.parts[-1]  # pragma: no cover - old gguf versions
    return str(bytes(last), encoding="utf-8") if last.dtype == np.uint8 else last.tolist()[0]


def read_gguf(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[int, Float[Tensor, " d_model"]]]:
    """Read a control-vector file: (metadata ``{key: value}``, ``{layer: float32 vector}``).

    Raises PersistenceError for a missing, unreadable or non-control-vector file.
    """
    gguf = _require_gguf()
    p = check_path(path, "control-vector file")
    if os.path.lexists(p) and not p.is_dir():
        fd, _ = open_regular(p, "control-vector file")  # a FIFO or device is refused as such
        os.close(fd)
    if not p.is_file():
        raise PersistenceError(f"No control-vector file at {p}; give the path of a .gguf file written by "
                               "export_gguf, repeng or llama.cpp's cvector-generator.")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:
        raise PersistenceError(f"{p} is not a readable GGUF file ({e}); write it again with export_gguf.") from e
    arch = _field_value(reader, "general.architecture")
    if arch is not None and arch != ARCH:
        raise PersistenceError(
            f"{p} is a GGUF file of architecture {arch!r}, not a control vector (architecture {ARCH!r}). "
            "Pass the control-vector file, not the model."
        )
    meta = {k: _field_value(reader, k) for k in reader.fields if not k.startswith("GGUF.")}
    vectors: dict[int, Tensor] = {}
    f32, f16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    for t in reader.tensors:
        layer = layer_from_tensor_name(t.name)
        if t.tensor_type not in (f32, f16):
            raise PersistenceError(
                f"{p}: tensor {t.name} has type {t.tensor_type.name}; control vectors are float32 "
                "(llama.cpp accepts only F32). Write it again with export_gguf."
            )
        if int(t.n_elements) != int(t.shape[0]):
            raise PersistenceError(f"{p}: tensor {t.name} has shape {list(map(int, t.shape))}; a direction is 1-D.")
        if layer in vectors:  # pragma: no cover - GGUF names are unique
            raise PersistenceError(f"{p}: two tensors named {t.name}.")
        vectors[layer] = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
    del reader  # release the memory map
    if not vectors:
        raise PersistenceError(f"{p} holds no 'direction.<layer>' tensors; it is not a control vector.")
    return meta, vectors


def import_gguf(path: str | os.PathLike[str], model: SteerableModel, *, alpha: float = 1.0,
                positions: str = "all") -> StaticVectors:
    """Read a llama.cpp control vector as a :class:`StaticVectors` steerer for ``model``.

    ``direction.{N}`` becomes steerlib layer ``N`` (the output of decoder block ``N``). The tensors
    are used as stored (an exporter's alpha is already in them), so the default ``alpha=1.0`` and
    ``positions="all"`` steer as llama.cpp's ``--control-vector FILE`` does.

    Raises:
        CompatibilityError: the directions' length is not ``model``'s hidden size, or the file
            steers a layer the model does not have.
        PersistenceError: a missing, unreadable or non-control-vector file.
    """
    meta, vectors = read_gguf(path)
    hint = str(meta.get(KEY_MODEL_HINT) or "")
    widths = {int(v.shape[0]) for v in vectors.values()}
    if len(widths) != 1:
        raise PersistenceError(f"{path}: the directions have different lengths {sorted(widths)}; the file is corrupt.")
    (width,) = widths
    if width != model.hidden_size:
        raise CompatibilityError(
            f"Hidden-size mismatch: {path} holds {width}-wide directions (model hint {hint!r}), but this model "
            f"({model.name!r}) has hidden size {model.hidden_size}. Load the model the control vector was made for."
        )
    too_deep = sorted(layer for layer in vectors if layer >= model.num_layers)
    if too_deep:
        raise CompatibilityError(
            f"{path} steers layers {too_deep}, but this model has {model.num_layers} decoder layers "
            f"(0..{model.num_layers - 1}). Load the model the control vector was made for (hint {hint!r})."
        )
    if hint and hint not in (model.model_type, model.name):
        warnings.warn(f"{path} was made for {hint!r}, and this model is {model.model_type!r} ({model.name!r}); "
                      "the hidden size matches, so it loads, but check that it is the right model.",
                      UserWarning, stacklevel=2)
    return StaticVectors.from_vectors(model, vectors, alpha=alpha, positions=positions, model_hint=hint)


__all__ = [
    "ARCH",
    "KEY_LAYER_COUNT",
    "KEY_MODEL_HINT",
    "StaticVectors",
    "export_gguf",
    "import_gguf",
    "layer_from_tensor_name",
    "read_gguf",
    "tensor_name",
]
