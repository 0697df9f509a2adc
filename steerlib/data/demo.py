"""The shipped demo prompts (``steerlib/resources/demo_prompts.jsonl``) as contrastive items."""

from __future__ import annotations

import json
import random
from importlib import resources
from typing import Any

from ..errors import DataError
from .items import ContrastiveItem
from .templates import TEXT_SAFETY_TEMPLATES

__all__ = ["DEMO_SPLIT_SIZES", "demo_items"]

#: Items per split and behaviour at ``scale=1`` (each at least 2 at any scale).
DEMO_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "train": {"harmful": 240, "advice": 50, "benign": 80},
    "val": {"harmful": 40, "advice": 8, "benign": 40},
    "test": {"harmful": 60, "advice": 24, "benign": 40},
}


def demo_items(scale: float = 1.0, seed: int = 0) -> dict[str, list[ContrastiveItem]]:
    """The shipped demo prompts as train / val / test items (stratified by behaviour, seeded).

    Each behaviour's prompts are shuffled with ``random.Random(seed)`` and cut into the
    :data:`DEMO_SPLIT_SIZES` (times ``scale``); the completions are the behaviour's
    :data:`~steerlib.data.templates.TEXT_SAFETY_TEMPLATES` pair.
    """
    text = resources.files("steerlib.resources").joinpath("demo_prompts.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines() if line]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["behavior"], []).append(r)
    rng = random.Random(seed)
    out: dict[str, list[ContrastiveItem]] = {"train": [], "val": [], "test": []}
    for beh, rs in by.items():
        rng.shuffle(rs)
        t = TEXT_SAFETY_TEMPLATES[beh]
        start = 0
        for split in ("train", "val", "test"):
            n = max(2, int(DEMO_SPLIT_SIZES[split][beh] * scale))
            out[split] += [ContrastiveItem(prompt=r["prompt"], positive=t.positive, negative=t.negative,
                                           behavior=beh, id=r["id"]) for r in rs[start:start + n]]
            start += n
        if start > len(rs):
            raise DataError(f"Not enough {beh} demo prompts for the requested split sizes.")
    return out
