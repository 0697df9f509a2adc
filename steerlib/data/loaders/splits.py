"""Splits of contrastive items: stratified train/val/test parts, parts that keep groups (images)
together, and a per-behaviour cap."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from ...errors import DataError
from ..items import ContrastiveItem

__all__ = ["cap_per_behavior", "split_by_group", "split_items"]


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    fr = [float(f) for f in fractions]
    if len(fr) < 2 or any(not (f > 0) for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise DataError(
            f"fractions must be two or more positive numbers that sum to 1, got {tuple(fractions)}; "
            "e.g. (0.7, 0.3) or (0.8, 0.1, 0.1)."
        )
    return fr


def _assign(n: int, fractions: list[float], rng: random.Random, shuffle: bool) -> list[int]:
    """The part of each of ``n`` elements: after an ``rng`` shuffle of their order (unless
    ``shuffle=False``), part ``k`` takes positions ``floor(n * F_{k-1})`` to ``floor(n * F_k)``
    (``F_k``: the cumulative fraction; the last part takes the rest)."""
    order = list(range(n))
    if shuffle:
        rng.shuffle(order)
    cum = [sum(fractions[: k + 1]) for k in range(len(fractions))]
    bounds = [0] + [min(n, int(math.floor(n * c + 1e-9))) for c in cum[:-1]] + [n]
    part = [0] * n
    for k in range(len(fractions)):
        for i in order[bounds[k]:bounds[k + 1]]:
            part[i] = k
    return part


def split_items(
    items: Sequence[ContrastiveItem],
    fractions: Sequence[float] = (0.7, 0.3),
    seed: int = 0,
    *,
    shuffle: bool = True,
    key: Callable[[ContrastiveItem], object] | None = None,
) -> tuple[list[ContrastiveItem], ...]:
    """Split items into ``len(fractions)`` parts, stratified by behaviour (or by ``key(item)``).

    Per group of ``n`` items, part ``k`` gets the items between ``floor(n * F_{k-1})`` and
    ``floor(n * F_k)`` where ``F_k`` is the cumulative fraction (the last part takes the rest),
    after a ``random.Random(seed)`` shuffle of the group (``shuffle=False`` keeps the given
    order, e.g. an already shuffled list). Each part keeps the input order. Example: 690 items
    with (0.7, 0.3) give 483 / 207.
    """
    fr = _check_fractions(fractions)
    keyf = key if key is not None else (lambda it: it.behavior)
    groups: dict[object, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(keyf(it), []).append(i)
    rng = random.Random(seed)
    part_of = [0] * len(items)
    for g in groups.values():
        for i, k in zip(g, _assign(len(g), fr, rng, shuffle)):
            part_of[i] = k
    parts: tuple[list[ContrastiveItem], ...] = tuple([] for _ in fr)
    for i, it in enumerate(items):
        parts[part_of[i]].append(it)
    return parts


def split_by_group(items: Sequence[ContrastiveItem], fractions: Sequence[float] = (0.7, 0.3), seed: int = 0,
                   key: Callable[[ContrastiveItem], object] | None = None) -> tuple[list[ContrastiveItem], ...]:
    """Split items so that no group (default: the item's first image) falls in two parts.

    The groups are shuffled with ``random.Random(seed)``; part ``k`` takes the groups up to the
    cumulative fraction ``F_k`` of the groups (the last part takes the rest), as
    :func:`split_items` does with items. Items keep their order within each part. Use it for
    POPE, where one image carries several questions.
    """
    fr = _check_fractions(fractions)
    keyf = key or (lambda it: str(it.images[0]) if it.images else it.id)
    groups = list(dict.fromkeys(keyf(it) for it in items))
    part_of = dict(zip(groups, _assign(len(groups), fr, random.Random(seed), True)))
    parts: tuple[list[ContrastiveItem], ...] = tuple([] for _ in fr)
    for it in items:
        parts[part_of[keyf(it)]].append(it)
    return parts


def cap_per_behavior(items: Sequence[ContrastiveItem], limit: int | None) -> list[ContrastiveItem]:
    """The first ``limit`` items of each behaviour label (all items when ``limit`` is None)."""
    if limit is None:
        return list(items)
    if limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}.")
    seen: dict[str, int] = {}
    out = []
    for it in items:
        seen[it.behavior] = seen.get(it.behavior, 0) + 1
        if seen[it.behavior] <= limit:
            out.append(it)
    return out
