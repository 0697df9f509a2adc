"""Stratified train/val/test splits of contrastive items."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from ...errors import DataError
from ..items import ContrastiveItem

__all__ = ["split_items"]


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
    fr = [float(f) for f in fractions]
    if len(fr) < 2 or any(not (f > 0) for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise DataError(
            f"fractions must be two or more positive numbers that sum to 1, got {tuple(fractions)}; "
            "e.g. (0.7, 0.3) or (0.8, 0.1, 0.1)."
        )
    keyf = key if key is not None else (lambda it: it.behavior)
    groups: dict[object, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(keyf(it), []).append(i)
    rng = random.Random(seed)
    part_of = [0] * len(items)
    cum = [sum(fr[: k + 1]) for k in range(len(fr))]
    for g in groups.values():
        order = list(g)
        if shuffle:
            rng.shuffle(order)
        n = len(order)
        bounds = [0] + [min(n, int(math.floor(n * c + 1e-9))) for c in cum[:-1]] + [n]
        for k in range(len(fr)):
            for i in order[bounds[k]:bounds[k + 1]]:
                part_of[i] = k
    parts: tuple[list[ContrastiveItem], ...] = tuple([] for _ in fr)
    for i, it in enumerate(items):
        parts[part_of[i]].append(it)
    return parts
