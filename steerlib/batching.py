"""Length-bucketed batching.

Rows of similar length share a batch, so little compute goes to padding. A token budget
(rows x longest row) lets short rows form large batches, which generation favours: one decoding
step costs nearly the same for 8 rows as for 64, because it is bound by reading the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import DataError


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int | None = None) -> list[list[int]]:
    """Row indices grouped into batches, shortest rows first.

    Rows are sorted by length (ties keep their order). A batch takes the next row while it has
    fewer than ``max_rows`` rows and, when ``max_tokens`` is given, while its padded size
    (rows x its longest length) stays within ``max_tokens``; a single row longer than the budget
    still gets a batch of its own. Every index appears exactly once.
    """
    if max_rows < 1:
        raise DataError(f"The batch size must be at least 1, got {max_rows}.")
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"The token budget per batch must be at least 1, got {max_tokens}; or pass None for no budget.")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        grown = len(current) + 1
        if current and (grown > max_rows or (max_tokens is not None and grown * lengths[i] > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
