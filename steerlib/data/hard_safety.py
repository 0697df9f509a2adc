"""The shipped hard-safety set (``steerlib/resources/hard_safety/``): benign prompts that sound harmful
and harmful prompts that use the same words, split by *kind* so that some kinds are never trained on.

Each prompt is written for this project (see the data card ``DATA_CARD.md``) and belongs to a
``kind`` (homonym, figurative, safe_target, video_game, fiction, history, definition, public_figure,
protection, cooking, medicine, chemistry_safety, stage_and_film, crime_research, sport) and a
``pair``: one harmful prompt and the benign prompts that share its words.
The split is by kind (:data:`HARD_SPLIT_KINDS`): the ``test`` kinds are never trained on or
selected with, the ``val`` kinds are for choosing settings.

The items match the demo's (:func:`~steerlib.data.demo.demo_items`): harmful prompts get the
:data:`~steerlib.data.templates.TEXT_HARMFUL` pair (refusal target), benign ones the
:data:`~steerlib.data.templates.TEXT_BENIGN` pair (equal completions: the zero target "leave
unchanged"), so both mix with the demo's items in one training set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, Literal

from ..errors import DataError, DataFileError
from .items import ContrastiveItem
from .templates import TEXT_SAFETY_TEMPLATES, BehaviorTemplate, apply_template

__all__ = ["HARD_KINDS", "HARD_SPLIT_KINDS", "HardSplit", "hard_safety_items", "hard_safety_records", "is_hard"]

HardSplit = Literal["train", "val", "test", "all"]
#: The kinds of each split (whole kinds, never mixed): a test of generalisation to unseen kinds.
HARD_SPLIT_KINDS: Mapping[str, tuple[str, ...]] = {
    "train": ("safe_target", "video_game", "fiction", "history", "definition", "protection",
              "medicine", "chemistry_safety", "stage_and_film", "crime_research", "sport"),
    "val": ("cooking", "public_figure"),
    "test": ("homonym", "figurative"),
}
HARD_KINDS: tuple[str, ...] = tuple(k for ks in HARD_SPLIT_KINDS.values() for k in ks)
_FILE = "hard_safety.jsonl"
_KEYS = ("id", "prompt", "label", "kind", "pair", "split")
DATASET = "hard_safety"


def hard_safety_records() -> list[dict[str, Any]]:
    """The shipped rows (``id``, ``prompt``, ``label`` benign/harmful, ``kind``, ``pair``, ``split``), checked."""
    text = resources.files("steerlib.resources").joinpath("hard_safety").joinpath(_FILE).read_text(encoding="utf-8")
    rows: list[dict[str, Any]] = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        r = json.loads(raw)
        missing = [k for k in _KEYS if k not in r]
        if missing:
            raise DataFileError(f"hard_safety/{_FILE}:{line}: missing {missing}.")
        if r["label"] not in ("benign", "harmful") or r["kind"] not in HARD_KINDS:
            raise DataFileError(f"hard_safety/{_FILE}:{line}: bad label {r['label']!r} or kind {r['kind']!r}.")
        want = next(s for s, ks in HARD_SPLIT_KINDS.items() if r["kind"] in ks)
        if r["split"] != want:
            raise DataFileError(f"hard_safety/{_FILE}:{line}: kind {r['kind']!r} belongs to split {want!r}, "
                                f"the row says {r['split']!r}.")
        rows.append(r)
    return rows


def hard_safety_items(split: HardSplit = "all", *, kinds: Sequence[str] | None = None,
                      labels: Sequence[str] = ("benign", "harmful"),
                      templates: Mapping[str, BehaviorTemplate] = TEXT_SAFETY_TEMPLATES) -> list[ContrastiveItem]:
    """The hard-safety prompts of ``split`` (or of the given ``kinds``) as contrastive items.

    ``behavior`` is the label (``"harmful"``: refusal target; ``"benign"``: zero target), the
    completions are ``templates[label]``'s; ``meta`` holds ``dataset="hard_safety"``, ``kind``,
    ``pair`` and ``split``. The file order is kept (kind by kind, pair by pair).

    Raises:
        DataError: an unknown split, kind or label.
    """
    if split not in ("train", "val", "test", "all"):
        raise DataError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}.")
    if kinds is not None:
        if isinstance(kinds, str):
            raise DataError(f"kinds must be a list of kinds, got the string {kinds!r}; write [{kinds!r}].")
        bad = [k for k in kinds if k not in HARD_KINDS]
        if bad:
            raise DataError(f"Unknown kinds {bad}; the kinds are {', '.join(HARD_KINDS)}.")
    bad_labels = [x for x in labels if x not in ("benign", "harmful")]
    if bad_labels or isinstance(labels, str):
        raise DataError(f"labels must be a list drawn from 'benign', 'harmful', got {labels!r}.")
    out = []
    for r in hard_safety_records():
        if split != "all" and r["split"] != split:
            continue
        if (kinds is not None and r["kind"] not in kinds) or r["label"] not in labels:
            continue
        out.append(apply_template(r["prompt"], templates[r["label"]], id=r["id"], behavior=r["label"],
                                  meta={"dataset": DATASET, "kind": r["kind"], "pair": r["pair"], "split": r["split"]}))
    return out


def is_hard(item: ContrastiveItem) -> bool:
    """Whether an item comes from the hard-safety set."""
    return item.meta.get("dataset") == DATASET
