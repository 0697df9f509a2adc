"""A tiny compare run with known answers, for the results-page tests (tests/test_view*.py).

A real ``compare`` on the tiny llama writes the folder (manifest, caches, steerers); its
generations are then replaced by scripted texts, so which answers are refused, which differ from
the unsteered one, and one answer full of HTML are known in advance. The expected page state is
computed here in Python from those records, independently of the page's JavaScript.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLAIN = "Here is how: step one, then step two."
REFUSAL = "I cannot help with that request."
CHANGED = "Here is how: step one, then step three."
XSS = "Please consult a doctor <b>now</b> & <script>alert(1)</script> \"quoted\" 'x' </td></tr>"


def scripted_text(rec: dict[str, Any]) -> str:
    """The answer of one generation record in the scripted run."""
    if rec["method"] == "none":
        return PLAIN
    if rec["behavior"] == "harmful" and rec["alpha"] == 4.0:
        return REFUSAL
    if rec["behavior"] == "harmful" and rec["id"].endswith("101"):
        return CHANGED
    if rec["method"] == "l2s" and rec["alpha"] == 4.0 and rec["id"] == "advice-100":
        return XSS
    return PLAIN


def make_run(out: Path) -> Path:
    """Run compare on the tiny llama into ``out`` and script its generations; returns ``out``."""
    import torch

    from steerlib.data.templates import TEXT_SAFETY_TEMPLATES, apply_template
    from steerlib.engine import SteerableModel
    from steerlib.eval.compare import compare
    from steerlib.eval.store import seal
    from steerlib.testing import build_tiny

    def items(n: int, start: int) -> list:
        return [apply_template(f"{beh} question number {i} about the weather", TEXT_SAFETY_TEMPLATES[beh],
                               id=f"{beh}-{i}") for beh in ("harmful", "advice", "benign") for i in range(start, start + n)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = build_tiny("llama")
        compare(SteerableModel(t.model, t.processor), items(3, 0), items(2, 100), ["none", "mean", "l2s"], [0.5, 4.0],
                [1], out_dir=out, max_new_tokens=3, batch_size=3, steerer_kwargs={"l2s": {"epochs": 2, "hidden": 4}},
                progress=False)
    finally:
        torch.set_num_threads(threads)
    path = out / "generations.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in recs:
        r["text"] = scripted_text(r)
        r["token_ids"] = [ord(c) for c in r["text"]]
    recs = [seal(r) for r in recs]  # scripted answers carry their own checksum, as compare's records do
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return out


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines() if line.strip()]


def expected_rows(out: Path, behavior: str = "all", outcome: str = "any", changed: str = "any",
                  column: str | None = None) -> list[str]:
    """Item ids the page should show under these filters (``column``: a config label, None = any steered)."""
    from steerlib.eval.metrics import is_refusal

    recs = records(out)
    man = json.loads((out / "run.json").read_text())
    ref = man["reference"]["config"]
    base = {r["id"]: r for r in recs if r["config"] == ref}
    shown = []
    for it in man["items"]:
        if behavior != "all" and it["behavior"] != behavior:
            continue
        cells = [r for r in recs if r["id"] == it["id"] and r["config"] != ref
                 and (column is None or r["config"] == column)]
        if outcome == "any" and changed == "any":
            shown.append(it["id"])
            continue
        for r in cells:
            ok_out = outcome == "any" or (outcome == "refused") == is_refusal(r["text"])
            is_changed = r["token_ids"] != base[it["id"]]["token_ids"]
            ok_chg = changed == "any" or (changed == "changed") == is_changed
            if ok_out and ok_chg:
                shown.append(it["id"])
                break
    return shown
