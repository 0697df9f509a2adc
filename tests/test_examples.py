"""Smoke runs of the examples in ``examples/`` on tiny models (``--tiny``): each runs end to end,
writes its report, and a second run resumes from the cache without generating anything."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_report(out: Path) -> None:
    for name in ("report.md", "metrics.csv", "metrics.json", "metrics_vs_alpha.png", "best_alpha.png",
                 "generations.jsonl", "run.json"):
        assert (out / name).is_file(), name


@pytest.mark.skipif(not (SHARED / "text-safety").is_dir(), reason="needs ../shared/data/text-safety")
def test_text_safety_example(tmp_path, capsys):
    ex = load_example("text_safety")
    out = tmp_path / "ts"
    res = ex.main(["--tiny", "--out", str(out), "--data-root", str(SHARED / "text-safety")])
    assert [r["method"] for r in res.rows] == ["none", "mean", "p2s", "l2s"]
    row = res.row("l2s")
    assert {"refusal", "deferral", "deferral_strict", "unchanged", "false_refusal"} <= set(row)
    assert res.row("p2s")["unchanged"] == 1.0  # the benign P2S target is exactly zero
    check_report(out)
    assert "| method | layer | alpha |" in capsys.readouterr().out
    again = ex.main(["--tiny", "--out", str(out), "--data-root", str(SHARED / "text-safety"), "--no-plots"])
    assert again.n_generated == 0 and again.rows == res.rows


@pytest.mark.skipif(not (SHARED / "coco128-train2017").is_dir(), reason="needs ../shared/data/coco128-train2017")
def test_pope_example(tmp_path):
    ex = load_example("pope")
    out = tmp_path / "pope"
    res = ex.main(["--tiny", "--out", str(out), "--coco-root", str(SHARED / "coco128-train2017")])
    assert [r["method"] for r in res.rows] == ["none", "prompt", "mean", "p2s", "l2s"]
    for r in res.rows:
        assert r["n"] == 4 and {"pope_acc", "pope_f1", "pope_yes_ratio", "pope_acc_paper", "pope_f1_paper"} <= set(r)
    check_report(out)
    assert res.manifest["train_items"] == 6 and len(res.manifest["items"]) == 4


def test_mmsafetybench_example(tmp_path):
    ex = load_example("mmsafetybench")
    out = tmp_path / "mmsb"
    res = ex.main(["--tiny", "--out", str(out)])
    assert [r["method"] for r in res.rows] == ["none", "prompt", "mean_ba", "mean", "p2s", "l2s"]
    for r in res.rows:
        assert {"refusal", "deferral", "unsafe@0.5", "unsafe@0.7", "unsafe@0.9"} <= set(r)
        assert r["unsafe_n"] == sum(1 for it in res.manifest["items"]
                                    if it["behavior"] in ("harmful", "legal", "financial", "health"))
    assert (out / "fake-mmsb" / "processed_questions" / "01-Illegal_Activitiy.json").is_file()
    check_report(out)


def test_selectivity_example_select_on_synthetic_features(tmp_path):
    """examples/selectivity.py's selection, on features built here: leave-one-kind-out folds over the
    training kinds, shares equal to a hand count of the candidate's decisions, and the choice rule
    (L2S only; CV and validation harmful steered >= 0.9; most benign left)."""
    import torch

    sel = load_example("selectivity")
    g = torch.Generator().manual_seed(0)
    kinds = sel.HARD_SPLIT_KINDS["train"][:3]
    meta, hs = [], []
    for group, kind_list in (("demo-train", [None]), ("hard-train", kinds), ("hard-val", [sel.HARD_SPLIT_KINDS["val"][0]]),
                             ("demo-val", [None])):
        for kind in kind_list:
            for beh in ("harmful", "benign"):
                for _ in range(6):
                    meta.append({"id": f"x{len(meta)}", "group": group, "behavior": beh, "kind": kind})
                    hs.append(torch.randn(8, generator=g) + (2.0 if beh == "harmful" else -2.0))
    h = torch.stack(hs)
    z = torch.zeros(len(meta), 8)
    harm = torch.tensor([m["behavior"] == "harmful" for m in meta])
    z[harm] = 3.0 + 0.1 * torch.randn(int(harm.sum()), 8, generator=g)
    t = {f"z_L{sel.STEER_LAYER}": z, "h_L15_last_prompt": h}
    cands = [{"method": "classify", "input_layer": 15, "position": "last_prompt", "mix": "demo+hard"}]
    old = sel.HARD_SPLIT_KINDS
    sel.HARD_SPLIT_KINDS = {**old, "train": kinds}
    try:
        rows = sel.select(t, meta, tmp_path, cands)
    finally:
        sel.HARD_SPLIT_KINDS = old
    # the classes are 4 standard deviations apart: every held-out kind is decided right
    assert rows[0]["steer_harmful"] == 1.0 and rows[0]["leave_benign"] == 1.0 and rows[0]["auc"] == 1.0
    assert rows[0]["hard-val benign steered"] == 0.0 and rows[0]["hard-val harmful steered"] == 1.0
    assert (tmp_path / "select.json").is_file()
    base = {"method": "l2s", "hard-val harmful steered": 0.95, "balanced_accuracy": 0.8}
    a = {**base, "steer_harmful": 0.95, "leave_benign": 0.70}
    b = {**base, "steer_harmful": 0.91, "leave_benign": 0.80}
    c = {**base, "steer_harmful": 0.85, "leave_benign": 0.95}  # leaves more, but steers too few harmful
    d = {**b, "method": "classify", "leave_benign": 0.99}  # not an L2S recipe
    assert sel.choose([a, b, c, d]) is b
    assert sel.choose([c, d]) is None
    assert "**" not in sel.select_markdown(rows)  # no L2S row: nothing is marked chosen
    ids = sel._hard_train([{"group": "hard-train", "kind": k} for k in ("safe_target", "medicine", "fiction")],
                          "demo+hard6", leave_out="fiction")
    assert ids == [0]  # medicine is not one of the first six kinds; fiction is left out
