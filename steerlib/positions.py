"""Where a steering vector is added: one small, validated spec.

=============== ============================================ ==========================
name            prompt pass (prefill or teacher-forced run)  each generated token
=============== ============================================ ==========================
``all``         every real (non-pad) token                   yes
``prompt``      tokens up to the last prompt token            no
``generated``   tokens after the prompt (a forced completion) yes
``last_prompt`` the last prompt token only                    no
``image``       image tokens only                             no
``text``        real tokens that are not image tokens         yes
=============== ============================================ ==========================

Pad positions are never steered. "The prompt" is everything the caller encoded as the input,
including the chat template's generation prompt; a teacher-forced completion is not prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .errors import PositionError

POSITION_NAMES: tuple[str, ...] = ("all", "prompt", "generated", "last_prompt", "image", "text")
_DECODE = {"all": True, "prompt": False, "generated": True, "last_prompt": False, "image": False, "text": True}


@dataclass(frozen=True)
class Positions:
    """A validated position spec; build it with ``Positions("prompt")`` or :func:`as_positions`."""

    name: str = "all"

    def __post_init__(self) -> None:
        if self.name not in POSITION_NAMES:
            raise PositionError(
                f"Unknown position {self.name!r}. Use one of: {', '.join(POSITION_NAMES)}."
            )

    @property
    def steers_generated(self) -> bool:
        """Whether each newly generated token is steered."""
        return _DECODE[self.name]

    def prompt_mask(
        self,
        attention_mask: Int[Tensor, "batch seq"],
        last_prompt_index: Int[Tensor, " batch"],
        image_mask: Bool[Tensor, "batch seq"] | None = None,
    ) -> Bool[Tensor, "batch seq"]:
        """The positions to steer in a full-sequence pass (prefill or teacher-forced forward)."""
        real = attention_mask.bool()
        idx = torch.arange(real.shape[1], device=real.device)[None, :]
        last = last_prompt_index.to(real.device)[:, None]
        if self.name == "all":
            return real
        if self.name == "prompt":
            return real & (idx <= last)
        if self.name == "generated":
            return real & (idx > last)
        if self.name == "last_prompt":
            return idx == last
        img = image_mask.to(real.device) if image_mask is not None else torch.zeros_like(real)
        if self.name == "image":
            return real & img
        return real & ~img  # text


PositionsLike = Union[str, Positions]


def as_positions(p: PositionsLike) -> Positions:
    """Accept a name or a :class:`Positions`."""
    if isinstance(p, Positions):
        return p
    if not isinstance(p, str):
        raise PositionError(f"positions must be a name or a Positions, got {type(p).__name__}.")
    return Positions(p)
