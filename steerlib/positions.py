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

Every "where" word steerlib takes belongs to one of these ``Literal`` vocabularies, and a word
means the same thing in every vocabulary it appears in:

* ``Where``: where a vector is added (the table above); ``Intervention(positions=...)``.
* ``TokenPosition``: one token per row, found by ``Batch.index``: ``last_prompt`` (the last
  prompt token), ``last_prompt_no_gen`` (the last token before the generation prompt),
  ``last_token`` (the row's very last token, e.g. the end of a closed teacher-forced turn).
* ``SourcePosition``: where a predictor (L2S's g) reads its input: ``last_prompt`` or
  ``last_prompt_no_gen``.
* ``Reduce``: how ``SteerableModel.read`` reduces a layer's states: any ``TokenPosition``,
  ``completion_mean`` or ``prompt_mean`` (each ``[batch, d_model]``), or ``per_token`` (no
  reduction: every position, pads included, ``[batch, seq, d_model]``).
* ``P2SReduction``: how P2S turns a contrastive pair into a difference: ``end_of_turn`` (the
  last token of the *closed* assistant turn), ``completion_mean``, ``sampled_mean``.

Every word means one thing. The read reductions ``all`` and ``last`` were renamed ``per_token``
and ``last_token`` (``all`` is a steering position), and the P2S reduction ``last`` was renamed
``end_of_turn``; the old spellings still work with a :class:`DeprecationWarning` (see
:func:`as_reduce` and :func:`steerlib.steerers.extract.check_reduction`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Union, get_args

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .errors import PositionError

Where = Literal["all", "prompt", "generated", "last_prompt", "image", "text"]
"""Where a steering vector is added (see the table above)."""
TokenPosition = Literal["last_prompt", "last_prompt_no_gen", "last_token"]
"""One token per row: what ``Batch.index`` finds."""
SourcePosition = Literal["last_prompt", "last_prompt_no_gen"]
"""Where a predictor intervention reads its input (a subset of ``TokenPosition``)."""
Reduce = Literal["last_prompt", "last_prompt_no_gen", "last_token", "completion_mean", "prompt_mean", "per_token"]
"""How ``SteerableModel.read`` reduces the states of a layer over positions."""
P2SReduction = Literal["end_of_turn", "completion_mean", "sampled_mean"]
"""How P2S reduces a contrastive pair (``end_of_turn``: the closed assistant turn's last token; the
old spelling ``last`` is accepted with a DeprecationWarning)."""

POSITION_NAMES: tuple[Where, ...] = get_args(Where)
TOKEN_POSITIONS: tuple[TokenPosition, ...] = get_args(TokenPosition)
SOURCE_POSITIONS: tuple[SourcePosition, ...] = get_args(SourcePosition)
READ_REDUCTIONS: tuple[Reduce, ...] = get_args(Reduce)
P2S_REDUCTIONS: tuple[P2SReduction, ...] = get_args(P2SReduction)
DEPRECATED_REDUCTIONS: dict[str, Reduce] = {"all": "per_token", "last": "last_token"}
"""Old read-reduction spellings, still accepted with a DeprecationWarning, and their new names."""
_DECODE = {"all": True, "prompt": False, "generated": True, "last_prompt": False, "image": False, "text": True}


@dataclass(frozen=True)
class Positions:
    """A validated position spec; build it with ``Positions("prompt")`` or :func:`as_positions`."""

    name: Where = "all"

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


PositionsLike = Union[Where, Positions]


def as_positions(p: PositionsLike) -> Positions:
    """Accept a name or a :class:`Positions`."""
    if isinstance(p, Positions):
        return p
    if not isinstance(p, str):
        raise PositionError(f"positions must be a name or a Positions, got {type(p).__name__}.")
    return Positions(p)


def as_reduce(reduce: str, *, stacklevel: int = 2) -> Reduce:
    """Check a read reduction and return its current name.

    The deprecated spellings (``all``, ``last``) are translated with a :class:`DeprecationWarning`
    attributed to ``stacklevel`` frames above the caller of this function (2: its caller's caller).
    Raises :class:`PositionError` for an unknown name.
    """
    if isinstance(reduce, str) and reduce in DEPRECATED_REDUCTIONS:
        new = DEPRECATED_REDUCTIONS[reduce]
        warnings.warn(f"reduce={reduce!r} is deprecated: it was renamed {new!r}. Use reduce={new!r}.",
                      DeprecationWarning, stacklevel=stacklevel + 1)
        return new
    if not isinstance(reduce, str) or reduce not in READ_REDUCTIONS:
        raise PositionError(f"Unknown reduction {reduce!r}; use one of {', '.join(READ_REDUCTIONS)}.")
    return reduce  # type: ignore[return-value]
