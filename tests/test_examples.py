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
