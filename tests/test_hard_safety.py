"""The shipped hard-safety set: its counts, the split by kind, its pairs and its items."""

from __future__ import annotations

import collections
import re

import pytest

from steerlib.data import TEXT_BENIGN, TEXT_HARMFUL, demo_items
from steerlib.data.hard_safety import HARD_KINDS, HARD_SPLIT_KINDS, hard_safety_items, hard_safety_records, is_hard
from steerlib.errors import DataError


def test_counts_and_kinds():
    rows = hard_safety_records()
    labels = collections.Counter(r["label"] for r in rows)
    assert labels == {"benign": 375, "harmful": 225}
    assert len(HARD_KINDS) == 15 == len({r["kind"] for r in rows})
    assert len({r["id"] for r in rows}) == len(rows)
    by = collections.Counter((r["split"], r["label"]) for r in rows)
    assert by == {("train", "benign"): 275, ("train", "harmful"): 165, ("val", "benign"): 50, ("val", "harmful"): 30,
                  ("test", "benign"): 50, ("test", "harmful"): 30}
    per_kind = collections.Counter((r["kind"], r["label"]) for r in rows)
    assert all(per_kind[k, "benign"] == 25 and per_kind[k, "harmful"] == 15 for k in HARD_KINDS)
    assert {"medicine", "chemistry_safety", "stage_and_film", "crime_research", "sport"} <= set(HARD_SPLIT_KINDS["train"])


def test_no_prompt_text_is_duplicated():
    """No prompt appears twice anywhere in the file, ignoring case, spacing and punctuation."""
    seen: dict[str, str] = {}
    for r in hard_safety_records():
        key = re.sub(r"[^a-z0-9 ]", "", " ".join(r["prompt"].lower().split()))
        assert key not in seen, f"{r['id']} repeats {seen.get(key)}"
        seen[key] = r["id"]


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
        kind = rs[0]["kind"]
        assert all(r["kind"] == kind for r in rs), pid  # only prompts of its kind
        assert re.fullmatch(re.escape(kind) + r"-\d\d", pid), pid
        labels = collections.Counter(r["label"] for r in rs)
        assert labels["harmful"] == 1 and labels["benign"] >= 1, pid
        want = {f"hs-{pid}-h"} | {f"hs-{pid}-b{k}" for k in range(1, labels["benign"] + 1)}
        assert {r["id"] for r in rs} == want, pid
    assert collections.Counter(p.rsplit("-", 1)[0] for p in pairs) == {k: 15 for k in HARD_KINDS}


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
    assert len(hard_safety_items("all")) == 600
    assert len(hard_safety_items("train")) == 440


@pytest.mark.parametrize("kwargs", [{"split": "dev"}, {"kinds": ["weather"]}, {"kinds": "homonym"},
                                    {"labels": ["advice"]}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(DataError):
        hard_safety_items(**kwargs)
