"""Contrastive items, behaviour templates and benchmark loaders."""

from .chat import Chat, Prompt, as_prompts
from .demo import DEMO_SPLIT_SIZES, demo_items
from .items import ContrastiveItem, check_items, items_hash, load_image
from .templates import (
    EXPERT_FINANCIAL,
    EXPERT_FINANCIAL_QWEN,
    EXPERT_LEGAL,
    EXPERT_LEGAL_QWEN,
    HEALTH,
    MMSB_SCENARIO_BEHAVIOR,
    MMSB_SCENARIOS,
    MMSB_TEMPLATES,
    POPE_ANSWER_FORMAT,
    PROMPT_BASELINE_POPE,
    PROMPT_BASELINE_SAFETY,
    SAFETY,
    TEXT_ADVICE,
    TEXT_BENIGN,
    TEXT_HARMFUL,
    TEXT_SAFETY_TEMPLATES,
    BehaviorTemplate,
    PromptInstruction,
    apply_template,
    mmsb_template,
    mmsb_templates,
    pope_completions,
    pope_template,
)
from .loaders import (
    FIGSTEP_PROMPT,
    build_pope_from_yolo,
    load_benign_seed_tasks,
    load_donotanswer,
    load_figstep,
    load_harmbench,
    load_mmsafetybench,
    load_pope,
    mmsb_split_indices,
    split_items,
    text_safety_items,
)
from .loaders.splits import cap_per_behavior, split_by_group
from .records import items_from_file, items_from_records, items_from_table, shipped_text_safety_dir

__all__ = ["Chat", "ContrastiveItem", "Prompt", "as_prompts", "check_items", "items_hash", "load_image"]

__all__ += [
    "BehaviorTemplate", "PromptInstruction", "apply_template", "SAFETY", "EXPERT_LEGAL",
    "EXPERT_FINANCIAL", "EXPERT_LEGAL_QWEN", "EXPERT_FINANCIAL_QWEN", "HEALTH", "POPE_ANSWER_FORMAT",
    "pope_completions", "pope_template", "PROMPT_BASELINE_SAFETY", "PROMPT_BASELINE_POPE",
    "TEXT_HARMFUL", "TEXT_ADVICE", "TEXT_BENIGN", "TEXT_SAFETY_TEMPLATES", "MMSB_SCENARIOS",
    "MMSB_SCENARIO_BEHAVIOR", "MMSB_TEMPLATES", "mmsb_template", "mmsb_templates",
    "FIGSTEP_PROMPT", "build_pope_from_yolo", "load_benign_seed_tasks", "load_donotanswer",
    "load_figstep", "load_harmbench", "load_mmsafetybench", "load_pope", "mmsb_split_indices",
    "split_items", "text_safety_items", "split_by_group", "cap_per_behavior", "DEMO_SPLIT_SIZES", "demo_items",
    "items_from_file", "items_from_records", "items_from_table", "shipped_text_safety_dir",
]
