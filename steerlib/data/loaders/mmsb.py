"""MM-SafetyBench in its official layout, with the paper's 80/20 split and scenario templates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

from ...errors import DataError, DataFileError
from ..items import ContrastiveItem
from ..templates import (
    MMSB_SCENARIO_BEHAVIOR,
    MMSB_SCENARIOS,
    SAFETY,
    BehaviorTemplate,
    ExpertWording,
    apply_template,
    mmsb_templates,
)
from ._io import check_image, confined, read_json, require_dir, require_keys

__all__ = ["load_mmsafetybench", "mmsb_split_indices", "MMSB_QUESTION_KEYS"]

#: The question field the official benchmark pairs with each image type.
MMSB_QUESTION_KEYS: Mapping[str, str] = MappingProxyType({
    "SD_TYPO": "Rephrased Question",
    "TYPO": "Rephrased Question",
    "SD": "Rephrased Question(SD)",
})


def mmsb_split_indices(n: int, train_fraction: float = 0.8, seed: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """The paper's split: ``np.random.seed(seed); np.random.shuffle(arange(n))``; first ``int(n*f)`` train.

    Uses a private ``RandomState(seed)`` (same stream as the global one, no global state).
    Returns (train indices, test indices) in shuffled order.
    """
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"train_fraction must be in (0, 1), got {train_fraction}.")
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    n_train = int(n * train_fraction)
    return idx[:n_train], idx[n_train:]


def _find_root(root: Path) -> Path:
    require_dir(root, "MM-SafetyBench")
    if (root / "processed_questions").is_dir():
        return root
    if (root / "data" / "processed_questions").is_dir():
        return root / "data"
    raise DataFileError(
        f"No processed_questions/ folder in {root} (nor in {root / 'data'}). Point root at the MM-SafetyBench "
        "data folder that holds processed_questions/ and imgs/."
    )


def load_mmsafetybench(
    root: str | Path,
    split: Literal["train", "test", "all"] = "all",
    *,
    wording: ExpertWording = "llava",
    behavior_agnostic: bool = False,
    image_type: str = "SD_TYPO",
    question_key: str | None = None,
    scenarios: Sequence[str] | None = None,
    train_fraction: float = 0.8,
    seed: int = 21,
    templates: Mapping[str, BehaviorTemplate] | None = None,
    check_images: bool = False,
) -> list[ContrastiveItem]:
    """Load MM-SafetyBench (``processed_questions/{scenario}.json`` + ``imgs/{scenario}/{image_type}/{id}.jpg``).

    Each question file maps a question id to a record with "Rephrased Question" etc. Items are
    built in dataset order (scenarios 01..13, ids in file order) from the question (stripped) +
    the scenario's template (:data:`~steerlib.data.templates.MMSB_SCENARIO_BEHAVIOR`: 01-09 and
    13 harmful/safe, 10 legal, 11 financial, 12 health; ``wording`` picks the LLaVA or Qwen
    expert wording; ``templates`` overrides the behaviour -> template mapping).
    ``behavior_agnostic=True`` gives every item the harmful/safe completions (the paper's
    ``single`` split, for Mean-S(BA)) while keeping the scenario's behaviour label.

    ``split``: the paper's 80/20 split over all loaded items (``np.random.seed(21)`` shuffle;
    1344 train / 336 test on the full benchmark); the returned items stay in dataset order.
    ``scenarios`` loads a subset (the split is then over that subset, so it differs from the
    paper's). meta: dataset, scenario, question_id, index (dataset position), split,
    key_phrase, phrase_type, source_file.
    """
    if split not in ("train", "test", "all"):
        raise DataError(f"split must be 'train', 'test' or 'all', got {split!r}.")
    base = _find_root(Path(root))
    key = question_key or MMSB_QUESTION_KEYS.get(image_type)
    if key is None:
        raise DataError(
            f"No default question key for image_type {image_type!r}; pass question_key= "
            f"(e.g. 'Rephrased Question'). Known image types: {', '.join(MMSB_QUESTION_KEYS)}."
        )
    tmpl = dict(templates) if templates is not None else dict(mmsb_templates(wording))
    names = tuple(scenarios) if scenarios is not None else MMSB_SCENARIOS
    for s in names:
        if s not in MMSB_SCENARIO_BEHAVIOR:
            raise DataError(f"Unknown MM-SafetyBench scenario {s!r}; expected one of {', '.join(MMSB_SCENARIOS)}.")

    rows: list[tuple[str, str, dict, Path]] = []
    for scen in names:
        qfile = confined(base, f"processed_questions/{scen}.json", base, "-", "question file")
        if not qfile.is_file():
            raise DataFileError(
                f"MM-SafetyBench question file not found: {qfile}. Check the download"
                + ("." if scenarios is not None else ", or pass scenarios=[...] to load a subset.")
            )
        data = read_json(qfile)
        if not isinstance(data, dict):
            raise DataFileError(f"{qfile}: expected a JSON object mapping question ids to records, got {type(data).__name__}.")
        for qid, rec in data.items():
            if not isinstance(rec, dict):
                raise DataFileError(f"{qfile}: question {qid!r} is a {type(rec).__name__}, expected an object.")
            require_keys(rec, (key,), qfile, f"question {qid}")
            if not isinstance(rec[key], str) or not rec[key].strip():
                raise DataFileError(f"{qfile}: question {qid!r}: {key!r} must be a non-empty string.")
            rows.append((scen, str(qid), rec, qfile))
    if not rows:
        raise DataFileError(f"No questions found under {base / 'processed_questions'}.")

    train_idx, test_idx = mmsb_split_indices(len(rows), train_fraction, seed)
    which = np.full(len(rows), "test", dtype=object)
    which[train_idx] = "train"
    keep = range(len(rows)) if split == "all" else sorted(test_idx if split == "test" else train_idx)

    items: list[ContrastiveItem] = []
    for i in keep:
        scen, qid, rec, qfile = rows[i]
        behavior = MMSB_SCENARIO_BEHAVIOR[scen]
        template = SAFETY if behavior_agnostic else tmpl.get(behavior)
        if template is None:
            raise DataError(f"templates has no entry for behaviour {behavior!r}; give one for each of "
                            f"{sorted(set(MMSB_SCENARIO_BEHAVIOR.values()))}.")
        img = confined(base / "imgs", f"{scen}/{image_type}/{qid}.jpg", qfile, f"question {qid}", "image")
        if check_images:
            check_image(img, qfile, f"question {qid}")
        items.append(apply_template(
            rec[key], template, images=(img,), id=f"mmsb-{scen}-{qid}", behavior=behavior,
            meta={"dataset": "mmsafetybench", "scenario": scen, "question_id": qid, "index": int(i),
                  "split": str(which[i]), "key_phrase": rec.get("Key Phrase"),
                  "phrase_type": rec.get("Phrase Type"), "source_file": str(qfile)},
        ))
    return items
