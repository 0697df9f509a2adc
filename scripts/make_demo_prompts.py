"""Rebuild ``steerlib/resources/demo_prompts.jsonl`` from the project's shared text-safety data.

    python scripts/make_demo_prompts.py ../shared/data/text-safety

Harmful: HarmBench standard behaviours plus Do-Not-Answer ``malicious_uses`` and
``information_hazard``; advice: Do-Not-Answer legal/financial/medical advice requests (intents
``S002*``); benign: self-instruct seed tasks. Deduplicated and shuffled with seed 0 by
:func:`steerlib.data.loaders.text_safety_items`, prompts of at most ``MAX_CHARS`` characters, the
first ``KEEP[behavior]`` of each behaviour kept (enough for the demo's train / val / test splits).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from steerlib.data.loaders.text_safety import text_safety_items

MAX_CHARS = 500
KEEP = {"harmful": 348, "advice": 89, "benign": 160}
OUT = Path(__file__).resolve().parents[1] / "steerlib" / "resources" / "demo_prompts.jsonl"


def main(root: str) -> None:
    counts = dict.fromkeys(KEEP, 0)
    lines = []
    for it in text_safety_items(root):
        raw = it.meta.get("raw_prompt", it.prompt)
        if len(raw) > MAX_CHARS or counts[it.behavior] >= KEEP[it.behavior]:
            continue
        counts[it.behavior] += 1
        lines.append(json.dumps({"id": it.id, "behavior": it.behavior, "prompt": raw,
                                 "source": it.meta.get("dataset", "")}, ensure_ascii=False))
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} prompts to {OUT}: {counts}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/text-safety")
