"""Smoke runs of the paper-reproduction scripts in examples/paper/ (``--tiny``: tiny random models, tiny data).

Each wrapper runs in-process as ``__main__`` (``runpy``), end to end: data, P2S extraction, fitting every
method, steered generation, scoring, report. The real runs need a GPU and the real weights; see
docs/reproducing.md.
"""

from __future__ import annotations

import json
import math
import os
import runpy
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

PAPER = Path(__file__).resolve().parents[1] / "examples" / "paper"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # the CI checkout has ../shared beside the repo
SCRIPTS = {("llava", "pope"): "llava_pope.py", ("llava", "mmsb"): "llava_mmsb.py",
           ("qwen2vl", "pope"): "qwen2vl_pope.py", ("qwen2vl", "mmsb"): "qwen2vl_mmsb.py"}


def _run(script: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERLIB_DATA", str(SHARED))  # the shared COCO128 when there, else a fake YOLO folder
    monkeypatch.setattr(sys, "argv", [str(PAPER / script), *args])
    runpy.run_path(str(PAPER / script), run_name="__main__")


def _generations(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().split("\n") if line]


@pytest.mark.parametrize(("model", "task"), sorted(SCRIPTS))
def test_paper_script_tiny_smoke(model, task, tmp_path, monkeypatch):
    out = tmp_path / f"{model}_{task}"
    _run(SCRIPTS[(model, task)], "--tiny", "--out", str(out), monkeypatch=monkeypatch)
    res = json.loads((out / "results.json").read_text())
    assert (res["model"], res["task"]) == (model, task)
    methods = res["methods"]
    want = {"pope": {"none", "prompt", "norm_random", "mean", "l2s", "p2s"},
            "mmsb": {"none", "prompt", "mean", "mean_ba", "l2s", "p2s"}}[task]
    assert set(methods) == want and set(res["results"]) == want
    # the tiny recipe keeps the paper's shape: L' > L* (one extra prefill) only for LLaVA safety
    r = res["recipe"]
    assert (r["input_layer"] > r["layer"]) == ((model, task) == ("llava", "mmsb"))
    assert r["input_position"] == ("last_prompt" if task == "pope" else "last_prompt_no_gen")
    rows = _generations(out)
    keys = [(g["method"], g["tag"], g["id"]) for g in rows]
    assert len(keys) == len(set(keys))
    if task == "pope":
        for per_subset in res["results"].values():
            assert set(per_subset) == {"random", "popular", "adversarial"}
            for m in per_subset.values():
                assert 0.0 <= m["acc_paper"] <= 1.0 and math.isclose(m["f1_paper_code"],
                                                                     2 * m["acc_paper"] / (1 + m["acc_paper"]))
                assert 0.0 <= m["yes_ratio"] <= 1.0
        assert len(rows) == sum(m["n"] for per in res["results"].values() for m in per.values())
    else:
        for m in res["results"].values():
            for tau in (0.5, 0.7, 0.9):
                assert 0.0 <= m[f"unsafe@{tau}"] <= 1.0
            assert m["n_expert"] > 0 and m["n_scored"] > 0
        assert (out / "judged.jsonl").is_file()
        # the test prompts are the bare questions (no behaviour suffix), as in the paper
        assert all("safe or harmful" not in g["prompt"] for g in rows)
    for name in ("mean", "l2s"):
        assert (out / "steerers" / name / "steerer.safetensors").is_file()
    assert (out / "results.md").read_text().startswith(f"## {model} / {task}")


def test_paper_script_resumes_without_regenerating(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ("--tiny", "--out", str(out), "--methods", "none,l2s,p2s")
    _run("llava_mmsb.py", *args, monkeypatch=monkeypatch)
    first = (out / "generations.jsonl").read_text()
    feats = sorted(p.name for p in (out / "features").iterdir())
    # a run killed mid-write leaves a cut line; the rerun ignores it and regenerates nothing it has
    with (out / "generations.jsonl").open("a") as f:
        f.write('{"method": "none", "config": "0123456789abcdef", "ta')
    _run("llava_mmsb.py", *args, monkeypatch=monkeypatch)
    assert (out / "generations.jsonl").read_text() == first  # the cut line is gone, nothing was added
    assert sorted(p.name for p in (out / "features").iterdir()) == feats
    assert json.loads((out / "results.json").read_text())["methods"] == ["none", "l2s", "p2s"]
    # a changed steering setting regenerates the steered methods, never the unsteered baseline
    _run("llava_mmsb.py", *args, "--alpha", "1.0", monkeypatch=monkeypatch)
    regenerated = {g["method"] for g in _generations(out)[len(first.splitlines()):]}
    assert regenerated == {"l2s", "p2s"}


def test_paper_recipes_match_the_paper():
    sys.path.insert(0, str(PAPER))
    try:
        from reproduce import RECIPES
    finally:
        sys.path.remove(str(PAPER))
    lp, lm = RECIPES[("llava", "pope")], RECIPES[("llava", "mmsb")]
    qp, qm = RECIPES[("qwen2vl", "pope")], RECIPES[("qwen2vl", "mmsb")]
    assert (lp.layer, lp.input_layer, lp.alpha, lp.hidden) == (14, 14, 1.0, 100)
    assert (qp.layer, qp.input_layer, qp.alpha, qp.hidden) == (17, 17, 1.0, 400)
    assert (lm.layer, lm.input_layer, lm.alpha, lm.hidden) == (15, 30, 2.2, 100)
    assert (qm.layer, qm.input_layer, qm.alpha, qm.hidden) == (14, 14, 2.2, 100)
    for r in (lp, qp):
        assert (r.reduction, r.continuation_tokens, r.input_position, r.init) == ("sampled_mean", 100, "last_prompt", "svd")
        assert r.class_balance and r.keep_best and r.scheduler == "cosine" and r.lr == 5e-5 and r.do_sample
    for r in (lm, qm):
        assert (r.reduction, r.input_position, r.init, r.equalize_norms_to) == ("end_of_turn", "last_prompt_no_gen", "dict",
                                                                                 "harmful")
        assert not r.class_balance and r.lr == 1e-4 and not r.do_sample and r.max_new_tokens == 200
    assert (lm.wording, qm.wording) == ("llava", "qwen")
