"""The shipped hard-safety set: its counts, the split by kind, its pairs and its items."""

from __future__ import annotations

import collections

import pytest

from steerlib.data import TEXT_BENIGN, TEXT_HARMFUL, demo_items
from steerlib.data.hard_safety import HARD_KINDS, HARD_SPLIT_KINDS, hard_safety_items, hard_safety_records, is_hard
from steerlib.errors import DataError


def test_counts_and_kinds():
    rows = hard_safety_records()
    labels = collections.Counter(r["label"] for r in rows)
    assert labels == {"benign": 250, "harmful": 150}
    assert len(HARD_KINDS) == 10 == len({r["kind"] for r in rows})
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({" ".join(r["prompt"].lower().split()) for r in rows}) == len(rows)  # no duplicate prompt
    by = collections.Counter((r["split"], r["label"]) for r in rows)
    assert by == {("train", "benign"): 150, ("train", "harmful"): 90, ("val", "benign"): 50, ("val", "harmful"): 30,
                  ("test", "benign"): 50, ("test", "harmful"): 30}


def test_split_is_by_whole_kind():
    rows = hard_safety_records()
    kinds = {s: {r["kind"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert kinds == {s: set(k) for s, k in HARD_SPLIT_KINDS.items()}
    assert not (kinds["train"] & kinds["test"]) and not (kinds["train"] & kinds["val"]) and not (kinds["val"] & kinds["test"])


def test_every_pair_has_one_harmful_and_benign_prompts_of_its_kind():
    pairs = collections.defaultdict(list)
    for r in hard_safety_records():
        pairs[r["pair"]].append(r)
    for pid, rs in pairs.items():
        assert len({r["kind"] for r in rs}) == 1 and pid.startswith(rs[0]["kind"])
        labels = collections.Counter(r["label"] for r in rs)
        assert labels["harmful"] == 1 and labels["benign"] >= 1, pid


def test_items_match_the_demo_conventions():
    items = hard_safety_items("test")
    assert len(items) == 80 and all(is_hard(it) for it in items)
    for it in items:
        t = TEXT_HARMFUL if it.behavior == "harmful" else TEXT_BENIGN
        assert (it.positive, it.negative) == (t.positive, t.negative)
        assert it.meta["kind"] in HARD_SPLIT_KINDS["test"] and it.meta["split"] == "test"
    benign = [it for it in items if it.behavior == "benign"]
    assert all(it.positive == it.negative for it in benign)  # zero P2S target: "leave unchanged"
    assert not any(is_hard(it) for it in demo_items(0.05)["train"])
    assert {it.id for it in hard_safety_items(kinds=["cooking"], labels=["harmful"])} == {
        r["id"] for r in hard_safety_records() if r["kind"] == "cooking" and r["label"] == "harmful"}
    assert len(hard_safety_items("all")) == 400


@pytest.mark.parametrize("kwargs", [{"split": "dev"}, {"kinds": ["weather"]}, {"kinds": "homonym"},
                                    {"labels": ["advice"]}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(DataError):
        hard_safety_items(**kwargs)
