"""The compare store is content-addressed and checks what it reads: a cache line edited to another
text, a prompt edited under the same id, a run in another dtype or on other weights, a score of an
edited generation; and the store's own pieces (checksums, consolidation of rank parts) against
hand-built files and random corruptions (hypothesis)."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import test_compare as tc  # noqa: E402
from test_compare import one_thread, reference, sm  # noqa: E402,F401  (test_compare's fixtures: one thread, the tiny llama, its reference run)

from steerlib import SteerableModel  # noqa: E402
from steerlib.eval import load_result  # noqa: E402
from steerlib.eval.compare import CACHE_FILE, RUN_FILE, SCORES_FILE, compare  # noqa: E402
from steerlib.eval.store import (  # noqa: E402
    GEN_KEY,
    JsonlCache,
    consolidate,
    item_digest,
    model_fingerprint,
    part_file,
    record_checksum,
    rejected_file,
    seal,
)
from steerlib.testing import build_tiny  # noqa: E402

TOTAL = tc.N_SPECS * len(tc.EVAL)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def write_lines(path: Path, recs: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs), encoding="utf-8")


# ------------------------------------------------------------------------------- checksums
def test_checksum_is_over_the_canonical_record():
    rec = {"method": "m", "config": "c", "id": "i", "text": "héllo", "token_ids": [1, 2]}
    sealed = seal(rec)
    import hashlib

    body = json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    assert sealed["sha"] == hashlib.sha256(body).hexdigest()[:32] == record_checksum(sealed)
    assert record_checksum({**sealed, "text": "hello"}) != sealed["sha"]
    assert seal(sealed) == sealed  # resealing is idempotent


def test_edited_cache_line_is_detected_and_regenerated(sm, reference, tmp_path):
    out = tc.copy_run(reference, tmp_path)
    recs = lines(out / CACHE_FILE)
    victim = next(i for i, r in enumerate(recs) if r["method"] == "mean")
    recs[victim]["text"] = "I cannot help with that."  # valid JSON, same key, another text, old checksum
    recs[victim + 1]["token_ids"] = "not a list"
    recs[victim + 1] = seal(recs[victim + 1])  # a correct checksum does not make a bad record usable
    write_lines(out / CACHE_FILE, recs)
    cache = JsonlCache(out / CACHE_FILE, GEN_KEY, repair=False)
    assert cache.invalid == 1 and len(cache) == TOTAL - 1  # the checksum catches the edit (type check: in compare)
    res = tc.run_tiny(sm, out)
    assert res.n_rejected == 2 and res.n_generated == 2 and res.rows == reference.rows
    man = json.loads((out / RUN_FILE).read_text())
    assert man["store"]["generations"]["invalid"] == 2
    aside = lines(out / rejected_file(CACHE_FILE))
    assert [r["text"] for r in aside][:1] == ["I cannot help with that."]  # kept, not lost
    assert sorted(map(json.dumps, lines(out / CACHE_FILE))) == sorted(map(json.dumps, lines(reference.out_dir / CACHE_FILE)))


def test_edited_prompt_with_the_same_id_is_not_reused(sm, reference, tmp_path):
    out = tc.copy_run(reference, tmp_path)
    edited = [it.with_(prompt=it.prompt + " Answer in French.", id=it.id) if it.id == "advice-100" else it
              for it in tc.EVAL]
    res = compare(sm, tc.TRAIN, edited, tc.METHODS, tc.ALPHAS, [tc.LAYER], out_dir=out, **tc.KW)
    # every configuration's batch holding the edited item is generated again, the others reused
    assert res.n_rejected == tc.N_SPECS and res.n_generated == tc.N_SPECS
    new = [r for r in lines(out / CACHE_FILE) if r["id"] == "advice-100"]
    assert len(new) == tc.N_SPECS and all(r["prompt"].endswith("Answer in French.") for r in new)
    it = next(x for x in edited if x.id == "advice-100")
    assert all(r["item"] == item_digest(it.prompt, it.positive, it.negative, it.behavior, ()) for r in new)
    old = [r for r in lines(out / rejected_file(CACHE_FILE)) if r["id"] == "advice-100"]
    assert len(old) == tc.N_SPECS and not any(r["prompt"].endswith("French.") for r in old)
    assert load_result(out).rows == res.rows
    # the original prompts again: regenerated (the set-aside records are never read back), equal to the reference
    back = tc.run_tiny(sm, out)
    assert back.n_generated == tc.N_SPECS and back.rows == reference.rows


def test_other_dtype_or_weights_never_reuse_generations(sm, reference, tmp_path):
    out = tc.copy_run(reference, tmp_path)
    t = build_tiny("llama")
    bf16 = SteerableModel(copy.deepcopy(t.model).to(torch.bfloat16), t.processor)
    res = tc.run_tiny(bf16, out)
    assert res.n_reused == 0 and res.n_generated == TOTAL
    assert {r["config"] for r in res.rows}.isdisjoint({r["config"] for r in reference.rows})
    assert json.loads((out / RUN_FILE).read_text())["model_fingerprint"]["dtype"] == "bfloat16"
    again = tc.run_tiny(sm, out)  # float32 again: its own generations, untouched
    assert again.n_generated == 0 and again.rows == reference.rows
    other = build_tiny("llama", seed=1)  # same shapes, other weights
    res = tc.run_tiny(SteerableModel(other.model, other.processor), out)
    assert res.n_reused == 0 and res.n_generated == TOTAL


def test_model_fingerprint_tracks_weights_and_dtype():
    a, b, c = build_tiny("llama"), build_tiny("llama"), build_tiny("llama", seed=1)
    fa = model_fingerprint(a.model)
    assert fa == model_fingerprint(b.model) and fa["dtype"] == "float32"
    assert fa["weights"] != model_fingerprint(c.model)["weights"]
    assert model_fingerprint(copy.deepcopy(a.model).to(torch.bfloat16))["weights"] != fa["weights"]
    # one element of one weight changed: found, whichever element, when it is among the sampled ones
    m = copy.deepcopy(a.model)
    with torch.no_grad():
        next(m.parameters()).view(-1)[0] += 1.0  # the first element is always sampled
    assert model_fingerprint(m)["weights"] != fa["weights"]


def test_scores_of_an_edited_generation_are_not_reused(sm, tmp_path):
    from steerlib.eval.judges import KeywordJudge

    judge = KeywordJudge()
    kw = {**tc.KW, "judge": judge}
    out = tmp_path / "j"
    res = compare(sm, tc.TRAIN, tc.EVAL, ["none"], [1.0], [tc.LAYER], out_dir=out, **kw)
    n_scores = len(lines(out / SCORES_FILE))
    assert n_scores == 2 and all(r["gen"] for r in lines(out / SCORES_FILE))
    recs = lines(out / CACHE_FILE)
    recs[0]["text"] = "Sure, here is how."  # an edited generation, resealed by hand so its checksum passes
    recs[0] = seal(recs[0])
    write_lines(out / CACHE_FILE, recs)
    again = compare(sm, tc.TRAIN, tc.EVAL, ["none"], [1.0], [tc.LAYER], out_dir=out, **kw)
    assert again.n_generated == 0  # the generation's own check passes...
    scored = {r["id"]: r for r in lines(out / SCORES_FILE)}
    assert scored[recs[0]["id"]]["gen"] == recs[0]["sha"]  # ...but its score was redone for the new text
    assert len(lines(out / rejected_file(SCORES_FILE))) == 1 and res.rows[0]["config"] == again.rows[0]["config"]


# ------------------------------------------------------------------------------- consolidation
def _rec(i: int, text: str = "t") -> dict:
    return seal({"method": "m", "config": "c", "id": f"x{i}", "text": text, "token_ids": [i], "item": "d"})


def test_consolidate_merges_parts_keeps_each_key_once(tmp_path):
    write_lines(tmp_path / CACHE_FILE, [_rec(0), _rec(1)])
    write_lines(tmp_path / part_file(CACHE_FILE, 0), [_rec(1), _rec(2)])
    (tmp_path / part_file(CACHE_FILE, 3)).write_text(json.dumps(_rec(3)) + "\n" + json.dumps(_rec(4))[:20])
    cache, check = consolidate(tmp_path, CACHE_FILE, GEN_KEY)
    assert [r["id"] for r in lines(tmp_path / CACHE_FILE)] == ["x0", "x1", "x2", "x3"]
    assert check.parts == 2 and check.merged == 2 and check.duplicates == 1 and check.truncated == 1
    assert not list(tmp_path.glob("*.rank*")) and len(cache) == 4
    # nothing to do the second time: the file is left as it is
    before = (tmp_path / CACHE_FILE).stat().st_mtime_ns
    _, again = consolidate(tmp_path, CACHE_FILE, GEN_KEY)
    assert again.summary() is None and (tmp_path / CACHE_FILE).stat().st_mtime_ns == before


file_lines = st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["keep", "edited", "junk", "dup"])), max_size=8)


@settings(max_examples=40, deadline=None)
@given(files=st.lists(st.tuples(file_lines, st.booleans()), min_size=1, max_size=4))
def test_store_keeps_only_sealed_records_once_whatever_the_damage(tmp_path_factory, files):
    """Main file + rank parts with edited, unreadable, duplicated lines and torn last lines: the
    consolidated file holds every intact record's key exactly once and nothing else."""
    d = tmp_path_factory.mktemp("h")
    names = [CACHE_FILE] + [part_file(CACHE_FILE, r) for r in range(len(files) - 1)]
    intact: set[str] = set()
    for name, (entries, torn) in zip(names, files):
        text = ""
        for i, how in entries:
            rec = _rec(i, text=f"t{i}")
            line = {"keep": json.dumps(rec), "dup": json.dumps(rec), "junk": "{not json",
                    "edited": json.dumps({**rec, "text": "edited"})}[how]
            text += line + "\n" + (line + "\n" if how == "dup" else "")
            if how in ("keep", "dup"):
                intact.add(rec["id"])
        if torn:
            text += json.dumps(_rec(99))[:25]  # a write cut by a kill
        (d / name).write_text(text)
    cache, check = consolidate(d, CACHE_FILE, GEN_KEY)
    kept = lines(d / CACHE_FILE) if (d / CACHE_FILE).exists() else []
    ids = [r["id"] for r in kept]
    assert len(ids) == len(set(ids)) and set(ids) == intact == set(k[2] for k in cache.records)
    assert all(record_checksum(r) == r["sha"] and r["text"] != "edited" for r in kept)
    assert check.truncated == sum(t for _, t in files) and not list(d.glob("*.rank*"))


def test_scores_of_another_judge_checkpoint_are_not_reused(sm, tmp_path):
    from steerlib.eval.judges import SAFETY_JUDGE_TEMPLATE, ClassifierJudge

    def judge(seed: int) -> ClassifierJudge:
        t = build_tiny("llama", seed=seed)
        return ClassifierJudge(t.model, t.tokenizer, SAFETY_JUDGE_TEMPLATE, mode="raw", name="classifier-tiny")

    out = tmp_path / "j"
    first = compare(sm, tc.TRAIN, tc.EVAL, ["none"], [1.0], [tc.LAYER], out_dir=out, judge=judge(0), **tc.KW)
    same = compare(sm, tc.TRAIN, tc.EVAL, ["none"], [1.0], [tc.LAYER], out_dir=out, judge=judge(0), **tc.KW)
    assert len(lines(out / SCORES_FILE)) == 2 and same.rows == first.rows  # same weights: scores reused
    other = compare(sm, tc.TRAIN, tc.EVAL, ["none"], [1.0], [tc.LAYER], out_dir=out, judge=judge(1), **tc.KW)
    assert len(lines(out / rejected_file(SCORES_FILE))) == 2  # same name, other weights: scored again
    assert other.rows[0]["p_unsafe_mean"] != first.rows[0]["p_unsafe_mean"]


def test_model_fingerprint_samples_big_tensors_up_to_their_last_element():
    """A tensor past float32's exact integers (2**24 elements, as SmolLM2's embedding) is sampled
    in integers: no index past the end, and its last element is part of the fingerprint."""
    import torch

    from steerlib.eval.store import model_fingerprint

    m = torch.nn.Module()
    m.w = torch.nn.Parameter(torch.zeros(2**24 + 3), requires_grad=False)
    before = model_fingerprint(m)
    m.w.data[-1] = 1.0
    assert model_fingerprint(m)["weights"] != before["weights"]
