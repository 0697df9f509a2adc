"""Independent references for the tests: raw PyTorch forward hooks and HF hidden states.

Nothing here imports steerlib's engine; the masks are recomputed from the attention mask and
the input ids by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def hook_generate(model: nn.Module, layer_module: nn.Module, inputs: dict[str, Tensor], vectors: Tensor, alpha: float,
                  prefill_mask: Tensor | None, steer_decode: bool, max_new_tokens: int, pad_token_id: int) -> Any:
    """Greedy generate with a raw forward hook adding ``alpha * v_row`` on ``prefill_mask`` (prefill)
    and on every decode step when ``steer_decode``. ``vectors`` is ``[B, D]``."""
    S = inputs["input_ids"].shape[1]
    v = vectors[:, None, :]

    def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
        h = out[0] if isinstance(out, tuple) else out
        if h.shape[1] == S and prefill_mask is not None:
            h = h + alpha * prefill_mask[..., None].to(h.dtype) * v
        elif h.shape[1] != S and steer_decode:
            h = h + alpha * v
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = layer_module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, pad_token_id=pad_token_id)
    finally:
        handle.remove()


def max_logit_diff(a: list[Tensor], b: list[Tensor]) -> float:
    """Max abs difference over steps, NaN-safe (-inf == -inf counts as equal)."""
    worst = 0.0
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b):
        both_inf = torch.isinf(x) & torch.isinf(y) & (torch.sign(x) == torch.sign(y))
        d = (x - y).abs().masked_fill(both_inf, 0.0)
        worst = max(worst, float(d.max()))
    return worst


def hidden_states(model: nn.Module, inputs: dict[str, Tensor], pass_position_ids: bool) -> tuple[Tensor, ...]:
    """HF ``output_hidden_states`` (position ids from the mask for text models, as generate does)."""
    kw = dict(inputs)
    if pass_position_ids:
        am = kw["attention_mask"].long()
        kw["position_ids"] = (am.cumsum(-1) - 1).masked_fill(am == 0, 1)
    with torch.no_grad():
        return model(**kw, output_hidden_states=True).hidden_states


def image_token_mask(input_ids: Tensor, image_token_id: int) -> Tensor:
    return input_ids == image_token_id


Fn = Callable[..., Any]


def hooked_forward(model: nn.Module, layer_modules: list[nn.Module], inputs: dict[str, Tensor], pass_position_ids: bool,
                   *, steer_at: int | None = None, vectors: Tensor | None = None, alpha: float = 0.0,
                   mask: Tensor | None = None) -> tuple[Any, list[Tensor]]:
    """One raw forward (position ids from the mask for text models, as the engine's forward does).

    With ``steer_at``, a raw forward hook on ``layer_modules[steer_at]`` adds ``alpha * v_row`` on
    ``mask`` (``[B, S]``; ``vectors`` is ``[B, D]``). Returns the model output and every layer's
    output (after steering), captured by further raw hooks registered after the steering one.
    """
    kw = dict(inputs)
    if pass_position_ids:
        am = kw["attention_mask"].long()
        kw["position_ids"] = (am.cumsum(-1) - 1).masked_fill(am == 0, 1)
    captured: list[Tensor | None] = [None] * len(layer_modules)
    handles = []

    def steer(_m: nn.Module, _i: Any, out: Any) -> Any:
        assert vectors is not None and mask is not None
        h = out[0] if isinstance(out, tuple) else out
        h = h + alpha * mask[..., None].to(h.device, h.dtype) * vectors[:, None, :].to(h.device, h.dtype)
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    def keep(i: int) -> Fn:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            captured[i] = (out[0] if isinstance(out, tuple) else out).detach().float().cpu()
        return hook

    if steer_at is not None:
        handles.append(layer_modules[steer_at].register_forward_hook(steer))
    handles += [m.register_forward_hook(keep(i)) for i, m in enumerate(layer_modules)]
    try:
        with torch.no_grad():
            out = model(**kw)
    finally:
        for handle in handles:
            handle.remove()
    assert all(c is not None for c in captured)
    return out, captured  # type: ignore[return-value]
