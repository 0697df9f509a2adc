"""Benchmark loaders: each returns ``list[ContrastiveItem]`` with behaviour labels and meta.

File problems raise :class:`steerlib.errors.DataFileError` naming the file and line.
"""

from .figstep import FIGSTEP_CATEGORY_BEHAVIOR, FIGSTEP_PROMPT, load_figstep
from .mmsb import MMSB_QUESTION_KEYS, load_mmsafetybench, mmsb_split_indices
from .pope import POPE_QUESTION, POPE_SPLITS, build_pope_from_yolo, load_pope, read_yolo_labels
from .splits import split_items
from .text_safety import (
    ADVICE_INTENT_PREFIX,
    load_benign_seed_tasks,
    load_donotanswer,
    load_harmbench,
    text_safety_items,
)

__all__ = [
    "ADVICE_INTENT_PREFIX",
    "FIGSTEP_CATEGORY_BEHAVIOR",
    "FIGSTEP_PROMPT",
    "MMSB_QUESTION_KEYS",
    "POPE_QUESTION",
    "POPE_SPLITS",
    "build_pope_from_yolo",
    "load_benign_seed_tasks",
    "load_donotanswer",
    "load_figstep",
    "load_harmbench",
    "load_mmsafetybench",
    "load_pope",
    "mmsb_split_indices",
    "read_yolo_labels",
    "split_items",
    "text_safety_items",
]
