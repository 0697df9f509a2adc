"""The load-time probe: one forward with raw hooks on every block of a candidate decoder stack.

:func:`probe_stack` checks what the engine relies on: the forward reaches the stack, each block
runs at most once per forward (a weight-shared, looped block would be steered several times),
and each block returns a ``[batch, seq, hidden]`` tensor (or a tuple starting with one) over the
input's tokens. A stack that fails is rejected with :class:`AdapterValidationError` (not the
language decoder) or :class:`UnsupportedModelError` (the decoder, but in a form the engine does
not steer). :func:`probe_image` is the tiny image used where a model needs pixel values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import AdapterValidationError, UnsupportedModelError

__all__ = ["StackProbe", "probe_image", "probe_stack"]


@dataclass(frozen=True)
class StackProbe:
    """What the probe saw: the block output is a tuple, its width, and the blocks that ran."""

    is_tuple: bool
    width: int
    ran: tuple[int, ...]


def probe_image(size: int = 32) -> Image.Image:
    """A deterministic ``size`` x ``size`` RGB gradient (no randomness, no files)."""
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    rgb = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[::-1, None], (1, size))], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def probe_stack(model: nn.Module, layers: nn.ModuleList, inputs: dict[str, torch.Tensor], *, path: str,
                hidden_size: int) -> StackProbe:
    """Run ``model(**inputs)`` once with raw hooks on every block of ``layers`` and check them."""
    calls = [0] * len(layers)
    outs: dict[int, Any] = {}

    def hook(i: int) -> Any:
        def keep(_m: nn.Module, _i: Any, out: Any) -> None:
            calls[i] += 1
            outs.setdefault(i, out)
        return keep

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(layers)]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    ran = tuple(i for i, c in enumerate(calls) if c)
    if not ran:
        raise AdapterValidationError(f"The probe forward never reached the blocks at {path!r}; they are not the "
                                     "language decoder that reads the prompt.")
    looped = [i for i, c in enumerate(calls) if c > 1]
    if looped:
        raise UnsupportedModelError(
            f"The blocks at {path!r} run several times per forward (block {looped[0]}: {calls[looped[0]]} times; a "
            "weight-shared or looped decoder). Steering layer i would add the vector at every repetition; steerlib "
            "refuses instead. Register an adapter whose layers_path names blocks that run once per token."
        )
    batch, seq = (int(x) for x in inputs["input_ids"].shape[:2])
    is_tuple = False
    width = 0
    for i in ran:
        out = outs[i]
        is_tuple = isinstance(out, tuple)
        h = out[0] if is_tuple and out else out
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else None
        where = f"Block {i} at {path!r}"
        if shape is None:
            raise UnsupportedModelError(
                f"{where} returns {type(out).__name__}, not a [batch, seq, hidden] tensor or a tuple starting with one; "
                "steerlib cannot steer this layer output. Register an adapter whose layers_path names blocks that "
                "return the residual stream as a tensor."
            )
        if len(shape) != 3:
            kind = UnsupportedModelError if hidden_size in shape else AdapterValidationError
            raise kind(
                f"{where} returns a tensor of shape {list(shape)}; the engine steers [batch, seq, hidden] = "
                f"[{batch}, {seq}, {hidden_size}] outputs only (a stacked [k, batch, seq, hidden] state is not "
                "handled). Register an adapter whose layers_path names blocks with a plain residual-stream output."
            )
        if shape[0] != batch or shape[1] != seq:
            raise AdapterValidationError(
                f"{where} returns shape {list(shape)} for an input of {batch} x {seq} tokens; these blocks do not "
                "run over the prompt's tokens (a vision or resampler stack?), so they are not the language decoder."
            )
        width = shape[2]
        if width != hidden_size:
            raise AdapterValidationError(
                f"Layer outputs at {path!r} are {width} wide but the config's hidden size is {hidden_size}; "
                f"{path!r} is not the residual stream of the language decoder."
            )
    return StackProbe(is_tuple=is_tuple, width=width, ran=ran)
