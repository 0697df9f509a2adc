"""Text-only safety sets: HarmBench behaviours, Do-Not-Answer, self-instruct seed tasks."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import DataError, DataFileError
from ..items import ContrastiveItem
from ..templates import TEXT_BENIGN, TEXT_HARMFUL, TEXT_SAFETY_TEMPLATES, BehaviorTemplate, apply_template
from ._io import (
    check_unique,
    confined,
    iter_csv_rows,
    iter_json_records,
    read_text_lines,
    require_dir,
    require_file,
    require_keys,
)

__all__ = [
    "ADVICE_INTENT_PREFIX",
    "load_harmbench",
    "load_donotanswer",
    "load_benign_seed_tasks",
    "text_safety_items",
]

#: Do-Not-Answer intents starting with this are requests for legal/financial/medical advice.
ADVICE_INTENT_PREFIX = "S002"


def load_harmbench(path: str | Path, template: BehaviorTemplate = TEXT_HARMFUL) -> list[ContrastiveItem]:
    """HarmBench behaviours: a ``.txt`` with one behaviour a line, or the official CSV (``Behavior`` column).

    Blank lines are skipped. Behaviour label: ``template.name`` ("harmful"). meta: dataset, line.
    """
    p = require_file(path, "HarmBench behaviour file")
    items: list[ContrastiveItem] = []
    if p.suffix.lower() == ".csv":
        seen: dict[str, int | str] = {}
        for line, row in iter_csv_rows(p, ("Behavior",)):
            text = row["Behavior"].strip()
            if not text:
                raise DataFileError(f"{p}:{line}: empty 'Behavior' field.")
            if row.get("BehaviorID", "").strip():
                check_unique(seen, row["BehaviorID"].strip(), p, line, "BehaviorID")
            meta = {"dataset": "harmbench", "line": line, "source_file": str(p)}
            for k in ("FunctionalCategory", "SemanticCategory", "BehaviorID"):
                if k in row:
                    meta[k] = row[k]
            items.append(apply_template(text, template, id=f"harmbench-{line}", meta=meta))
    else:
        for line, text in read_text_lines(p):
            if not text.strip():
                continue
            items.append(apply_template(
                text.strip(), template, id=f"harmbench-{line}",
                meta={"dataset": "harmbench", "line": line, "source_file": str(p)},
            ))
    if not items:
        raise DataFileError(f"{p}: no behaviours found; the file is empty.")
    return items


def load_donotanswer(
    path: str | Path,
    *,
    templates: Mapping[str, BehaviorTemplate] = TEXT_SAFETY_TEMPLATES,
    advice_prefix: str = ADVICE_INTENT_PREFIX,
) -> list[ContrastiveItem]:
    """Do-Not-Answer prompts from one ``{risk_area}.jsonl`` (``prompt``, ``intents``) or a folder of them.

    An item is ``"advice"`` when one of its intents starts with ``advice_prefix`` (S002:
    financial/legal/medical advice), else ``"harmful"``; completions from ``templates``.
    meta: dataset, risk_area (file stem), intents, line, source_file.
    """
    p = Path(path)
    files = sorted(require_dir(p, "Do-Not-Answer").glob("*.jsonl")) if p.is_dir() else [require_file(p, "Do-Not-Answer file")]
    if not files:
        raise DataFileError(f"No *.jsonl files in {p}.")
    for beh in ("harmful", "advice"):
        if beh not in templates:
            raise DataError(f"templates needs a {beh!r} entry for Do-Not-Answer.")
    items: list[ContrastiveItem] = []
    for f in files:
        if p.is_dir():
            confined(p, f.name, p, "-", "Do-Not-Answer file")
        seen: dict[str, int | str] = {}
        for line, rec in iter_json_records(f):
            require_keys(rec, ("prompt", "intents"), f, line)
            if rec.get("id") is not None:
                check_unique(seen, str(rec["id"]), f, line, "id")
            text, intents = rec["prompt"], rec["intents"]
            if not isinstance(text, str) or not text.strip():
                raise DataFileError(f"{f}:{line}: 'prompt' must be a non-empty string.")
            if isinstance(intents, str):
                intents = [intents]
            if not isinstance(intents, list) or not all(isinstance(x, str) for x in intents):
                raise DataFileError(f"{f}:{line}: 'intents' must be a list of strings, got {intents!r}.")
            beh = "advice" if any(x.startswith(advice_prefix) for x in intents) else "harmful"
            items.append(apply_template(
                text.strip(), templates[beh], id=f"dna-{f.stem}-{line}", behavior=beh,
                meta={"dataset": "donotanswer", "risk_area": f.stem, "intents": list(intents),
                      "line": line, "source_file": str(f)},
            ))
    if not items:
        raise DataFileError(f"{p}: no prompts found; the file(s) are empty. Check the path or re-download the data.")
    return items


def load_benign_seed_tasks(
    path: str | Path, template: BehaviorTemplate = TEXT_BENIGN, separator: str = "\n\n"
) -> list[ContrastiveItem]:
    """Self-instruct seed tasks (``instruction``, ``instances``): prompt = instruction + first instance input.

    The input is appended after ``separator`` when it is not empty. meta: dataset, task_id, name, line.
    """
    p = require_file(path, "Benign seed-task file")
    items: list[ContrastiveItem] = []
    seen: dict[str, int | str] = {}
    for line, rec in iter_json_records(p):
        require_keys(rec, ("instruction", "instances"), p, line)
        instr, inst = rec["instruction"], rec["instances"]
        if not isinstance(instr, str) or not instr.strip():
            raise DataFileError(f"{p}:{line}: 'instruction' must be a non-empty string.")
        if not isinstance(inst, list):
            raise DataFileError(f"{p}:{line}: 'instances' must be a list of {{'input', 'output'}} objects.")
        inp = ""
        if inst:
            if not isinstance(inst[0], dict):
                raise DataFileError(f"{p}:{line}: 'instances' must be a list of {{'input', 'output'}} objects.")
            inp = inst[0].get("input") or ""
            if not isinstance(inp, str):
                raise DataFileError(f"{p}:{line}: instance 'input' must be a string.")
        prompt = instr.strip() + (separator + inp.strip() if inp.strip() else "")
        tid = rec.get("id", f"line{line}")
        check_unique(seen, f"benign-{tid}", p, line, "task id")
        items.append(apply_template(
            prompt, template, id=f"benign-{tid}",
            meta={"dataset": "self-instruct-seed", "task_id": tid, "name": rec.get("name"),
                  "line": line, "source_file": str(p)},
        ))
    if not items:
        raise DataFileError(f"{p}: no tasks found; the file is empty.")
    return items


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def text_safety_items(
    root: str | Path,
    *,
    harmful_sources: Sequence[str] = ("harmbench", "malicious_uses", "information_hazard"),
    advice_sources: Sequence[str] = ("misinformation_harms", "human_chatbox"),
    benign: bool = True,
    seed: int = 0,
    templates: Mapping[str, BehaviorTemplate] = TEXT_SAFETY_TEMPLATES,
) -> list[ContrastiveItem]:
    """The text-safety set of ``viability-text-safety.md``: harmful, advice and benign items.

    ``root`` holds ``harmbench_standard.txt``, ``donotanswer/{risk_area}.jsonl`` and
    ``benign_seed_tasks.jsonl``. Harmful: the HarmBench behaviours (source ``"harmbench"``) and
    the non-advice prompts of the listed Do-Not-Answer risk areas; advice: the S002-intent
    prompts of ``advice_sources``; benign: the seed tasks. Prompts are deduplicated
    (whitespace- and case-insensitive; the first occurrence wins, in the order harmful, advice,
    benign) and the whole list is shuffled with ``random.Random(seed)``. Split it with
    :func:`split_items` (stratified by behaviour). With the shipped data: 690 harmful, 89 advice,
    175 benign.
    """
    root = require_dir(root, "Text-safety data")
    for beh in ("harmful", "advice", "benign"):
        if beh not in templates:
            raise DataError(f"templates needs a {beh!r} entry (harmful, advice, benign).")

    def dna(name: str) -> list[ContrastiveItem]:
        return load_donotanswer(confined(root, f"donotanswer/{name}.jsonl", root, "-", "Do-Not-Answer file"),
                                templates=templates)

    pools: list[ContrastiveItem] = []
    for src in harmful_sources:
        if src == "harmbench":
            pools += load_harmbench(confined(root, "harmbench_standard.txt", root, "-", "HarmBench file"),
                                    templates["harmful"])
        else:
            pools += [it for it in dna(src) if it.behavior == "harmful"]
    for src in advice_sources:
        pools += [it for it in dna(src) if it.behavior == "advice"]
    if benign:
        pools += load_benign_seed_tasks(confined(root, "benign_seed_tasks.jsonl", root, "-", "seed-task file"),
                                        templates["benign"])

    seen: set[str] = set()
    out: list[ContrastiveItem] = []
    for it in pools:
        k = _norm(it.meta.get("raw_prompt", it.prompt))
        if k in seen:
            continue
        seen.add(k)
        out.append(it)
    random.Random(seed).shuffle(out)
    return out
