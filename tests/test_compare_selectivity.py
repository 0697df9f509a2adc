"""``steerlib compare``'s selectivity report (``selectivity.md`` / ``.json``) and ``--hard-safety``, on the
tiny llama with the shared text-safety data: the printed and written numbers against a hand count from
the run's generations, the Wilson intervals against ``proportion``, the McNemar counts against a hand
count, multi-alpha runs, and the refusals."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from steerlib.app.cli import main
from steerlib.app.compare_cli import add_arguments, load_compare_data, print_selectivity
from steerlib.data import cap_per_behavior
from steerlib.data.hard_safety import HARD_SPLIT_KINDS, hard_safety_items
from steerlib.data.templates import apply_template, pope_template
from steerlib.eval import selectivity as selectivity_mod
from steerlib.eval.compare import CACHE_FILE, RUN_FILE
from steerlib.eval.judges import is_strict_refusal
from steerlib.eval.metrics import is_refusal, proportion
from steerlib.eval.rows import load_result
from steerlib.eval.selectivity import mcnemar_exact


def _shared_data() -> Path | None:
    """The shared data folder: ``$STEERLIB_DATA``, else ``shared/data`` beside any folder above this file
    (a worktree sits deeper than the main checkout), else /work/shared/data."""
    env = os.environ.get("STEERLIB_DATA", "").strip()
    candidates = [Path(env).expanduser()] if env else []
    candidates += [p / "shared" / "data" for p in Path(__file__).resolve().parents]
    candidates.append(Path("/work/shared/data"))
    return next((c for c in candidates if (c / "text-safety").is_dir()), None)


DATA = _shared_data()
pytestmark = pytest.mark.skipif(DATA is None, reason="needs the shared text-safety data ($STEERLIB_DATA)")
LIMIT = 2
MAX_NEW = 3


def cli_args(out: Path, *extra: str, methods: str = "none,mean,l2s", alphas: str = "1") -> list[str]:
    return ["compare", "--model", "tiny:llama", "--data", "text-safety", "--data-root", str(DATA / "text-safety"),
            "--limit", str(LIMIT), "--methods", methods, "--alphas", alphas, "--layers", "1",
            "--max-new-tokens", str(MAX_NEW), "--batch-size", "8", "--epochs", "3", "--hidden", "4", "--threads", "1",
            "--out", str(out), "--no-progress", "--no-plots", *extra]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    """One compare run with the hard-safety test kinds: its folder and what it printed."""
    out = tmp_path_factory.mktemp("sel") / "run"
    rc, text, err = run_cli(cli_args(out, "--hard-safety", "test"))
    assert rc == 0, err
    return out, text


def namespace(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


# ---------------------------------------------------------------------------------------- hand count
def hand_report(out: Path, judge: Callable[[str], bool], against: str | None) -> dict:
    """Rates and paired counts from generations.jsonl and run.json alone (no steerlib report code)."""
    man = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    recs = {(r["method"], r["config"], r["id"]): r
            for r in map(json.loads, (out / CACHE_FILE).read_text(encoding="utf-8").splitlines())}
    hard = {it.id for it in hard_safety_items("all")}
    groups: dict[str, list[str]] = {}
    for it in man["items"]:
        if it["behavior"] in ("harmful", "benign"):
            groups.setdefault(("hard_" if it["id"] in hard else "") + it["behavior"], []).append(it["id"])
    rows = load_result(out).rows
    ref = man["reference"]
    n_tok = min(32, MAX_NEW)
    flags: dict[str, dict[str, dict[str, list[bool]]]] = {}
    for row in rows:
        label = row["method"] if sum(r["method"] == row["method"] for r in rows) == 1 else row["label"]
        per: dict[str, dict[str, list[bool]]] = {}
        for g, ids in groups.items():
            texts = [recs[(row["method"], row["config"], i)]["text"] for i in ids]
            if g.endswith("harmful"):
                per[g] = {"refused": [judge(t) for t in texts]}
            else:
                same = [recs[(row["method"], row["config"], i)]["token_ids"][:n_tok]
                        == recs[(ref["method"], ref["config"], i)]["token_ids"][:n_tok] for i in ids]
                per[g] = {"false_refusal": [judge(t) for t in texts], "unchanged": same}
        flags[label] = per
    paired = {}
    if against is not None:
        for label, per in flags.items():
            if label == against:
                continue
            paired[label] = {g: {m: (sum(x and not y for x, y in zip(f, flags[against][g][m])),
                                     sum(y and not x for x, y in zip(f, flags[against][g][m])))
                                 for m, f in ms.items()} for g, ms in per.items()}
    return {"groups": groups, "flags": flags, "paired": paired}


def check_against_hand(rep: dict, judge_name: str, judge: Callable[[str], bool], out: Path) -> None:
    hand = hand_report(out, judge, rep["against"])
    assert rep["ids"] == hand["groups"]
    assert set(rep["labels"]) == set(hand["flags"])
    for label, per in hand["flags"].items():
        for g, ms in per.items():
            for m, f in ms.items():
                got = rep["rates"][label][judge_name][g][m]
                want = proportion(f)
                assert (got["k"], got["n"]) == (want.k, want.n) == (sum(f), len(f))
                assert got["value"] == pytest.approx(want.value)
                assert got["ci95"] == pytest.approx([want.low, want.high])
    assert set(rep["paired"]) == set(hand["paired"])
    for label, per in hand["paired"].items():
        for g, ms in per.items():
            for m, (b, c) in ms.items():
                t = rep["paired"][label][judge_name][g][m]
                assert (t["method_only"], t["reference_only"]) == (b, c)
                assert t["p"] == pytest.approx(mcnemar_exact(b, c))


# ---------------------------------------------------------------------------------------- tests
def test_printed_and_written(run):
    out, text = run
    md = (out / "selectivity.md").read_text(encoding="utf-8")
    assert text.index("| method | layer | alpha | n |") < text.index("Selectivity (")  # after the main table
    assert "Selectivity (2 harmful, 2 hard-harmful, 2 benign, 2 hard-benign eval prompts" in text
    for judge in ("keyword", "strict"):
        assert f"Refusal judge: {judge};" in text and f"Refusal judge: {judge};" in md
    assert text.count("Paired exact McNemar tests against l2s") == 2
    assert "| hard-benign unchanged |" in md and "| mean |" in md
    body = md.split("\n", 2)[2].strip()  # the file is the printed block under a heading
    assert body in text
    assert f"wrote {out / 'selectivity.md'}" in text and f"wrote {out / 'selectivity.json'}" in text
    rep = json.loads((out / "selectivity.json").read_text(encoding="utf-8"))
    assert rep["against"] == "l2s" and rep["labels"] == ["none", "mean", "l2s"] and rep["note"] == ""
    assert rep["unchanged_tokens"] == MAX_NEW


def test_numbers_equal_a_hand_count(run):
    out, _ = run
    rep = json.loads((out / "selectivity.json").read_text(encoding="utf-8"))
    check_against_hand(rep, "keyword", is_refusal, out)
    check_against_hand(rep, "strict", is_strict_refusal, out)
    assert rep["rates"]["none"]["keyword"]["benign"]["unchanged"]["value"] == 1.0


def test_hand_count_with_a_judge_that_splits_the_answers(run, tmp_path, monkeypatch):
    """The tiny model never refuses; a judge that says yes to about half of its answers checks the
    refusal counts and the McNemar pairs on non-trivial flags (a rerun reuses every generation)."""
    out = tmp_path / "copy"
    shutil.copytree(run[0], out)

    def odd(text: str) -> bool:
        return len(text) % 2 == 1

    monkeypatch.setitem(selectivity_mod.JUDGES, "keyword", odd)
    rc, text, err = run_cli(cli_args(out, "--hard-safety", "test"))
    assert rc == 0, err
    assert "0 generated" in text
    rep = json.loads((out / "selectivity.json").read_text(encoding="utf-8"))
    check_against_hand(rep, "keyword", odd, out)
    hand = hand_report(out, odd, "l2s")
    assert any(any(f) for per in hand["flags"].values() for ms in per.values() for f in ms.values())


def test_hard_safety_test_adds_exactly_the_hard_test_items(run):
    out, _ = run
    base_train, base_test = load_compare_data(namespace(*cli_args(out)[1:]))
    train, test = load_compare_data(namespace(*cli_args(out, "--hard-safety", "test")[1:]))
    want = cap_per_behavior(hard_safety_items("test"), LIMIT)
    assert train == base_train and test == base_test + want
    assert {it.meta["kind"] for it in want} <= set(HARD_SPLIT_KINDS["test"])
    man = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    assert [it["id"] for it in man["items"]] == [it.id for it in base_test + want]
    # without --limit: every hard test item; --hard-safety-train adds the train kinds to the training items
    full = ["--data", "text-safety", "--data-root", str(DATA / "text-safety")]
    t0, e0 = load_compare_data(namespace(*full))
    t1, e1 = load_compare_data(namespace(*full, "--hard-safety", "test", "--hard-safety-train"))
    assert e1 == e0 + hard_safety_items("test") and t1 == t0 + hard_safety_items("train")
    # the default leaves today's items, also for a namespace built without the new flags
    legacy = namespace(*full)
    del legacy.hard_safety, legacy.hard_safety_train
    assert load_compare_data(legacy) == (t0, e0) == load_compare_data(namespace(*full, "--hard-safety", "none"))


def test_multi_alpha_runs(tmp_path):
    out = tmp_path / "alphas"
    rc, text, err = run_cli(cli_args(out, methods="none,l2s", alphas="0.5,4"))
    assert rc == 0, err
    rep = json.loads((out / "selectivity.json").read_text(encoding="utf-8"))
    assert rep["labels"] == ["none", "l2s L1 a=0.5", "l2s L1 a=4"] and rep["against"] is None
    assert rep["paired"] == {} and "Paired exact McNemar" not in text
    assert "No paired tests: l2s has 2 configurations" in text and "--selectivity-against 'l2s L1 a=0.5'" in text
    check_against_hand(rep, "keyword", is_refusal, out)
    rc, text, err = run_cli(cli_args(out, "--selectivity-against", "l2s L1 a=4", methods="none,l2s", alphas="0.5,4"))
    assert rc == 0, err
    rep = json.loads((out / "selectivity.json").read_text(encoding="utf-8"))
    assert rep["against"] == "l2s L1 a=4" and set(rep["paired"]) == {"none", "l2s L1 a=0.5"}
    check_against_hand(rep, "strict", is_strict_refusal, out)
    rc, text, err = run_cli(cli_args(out, "--selectivity-against", "none", methods="none,l2s", alphas="0.5,4"))
    assert rc == 0 and json.loads((out / "selectivity.json").read_text())["against"] == "none"
    rc, _, err = run_cli(cli_args(out, "--selectivity-against", "l2s", methods="none,l2s", alphas="0.5,4"))
    assert rc == 2 and err.startswith("error: --selectivity-against l2s: l2s has 2 configurations")
    assert err.count("\n") == 1 and "Traceback" not in err
    rc, _, err = run_cli(cli_args(out, "--selectivity-against", "mean", methods="none,l2s", alphas="0.5,4"))
    assert rc == 2 and err.startswith("error: --selectivity-against 'mean': no such method in --methods")


@pytest.mark.skipif(DATA is None or not (DATA / "coco128-train2017").is_dir(), reason="needs the shared COCO128")
def test_hard_safety_refused_for_pope_like_data(tmp_path):
    for flag in (["--hard-safety", "test"], ["--hard-safety-train"]):
        rc, text, err = run_cli(["compare", "--model", "tiny:llava", "--data", "pope-coco", "--data-root",
                                 str(DATA / "coco128-train2017"), "--limit", "1", "--out", str(tmp_path / "p"), *flag])
        assert rc == 2 and err.startswith(f"error: {flag[0]}") and "no harmful and benign behaviours" in err
        assert err.count("\n") == 1 and "Traceback" not in err and text == ""
    assert not (tmp_path / "p").exists()


def test_no_report_without_harmful_and_benign_items(tmp_path):
    pope = [apply_template(f"Is there a cat {i}?", pope_template("yes" if i % 2 else "no"), id=f"q{i}")
            for i in range(4)]
    assert print_selectivity(None, pope) == []  # type: ignore[arg-type]  # returns before reading the result


def test_view_reads_a_compare_folder_with_selectivity(run, tmp_path):
    from steerlib.app.view import build_page, write_view

    page = build_page(run[0])
    assert "<html" in page.lower()
    assert write_view(run[0], tmp_path / "view.html").is_file()
