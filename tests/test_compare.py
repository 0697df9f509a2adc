"""steerlib compare: resumability (in-process interruption and a real SIGKILL mid-write), cache
corruption, fitted-steerer reuse, metrics against hand computations, the report files, the CLI
and the errors users hit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import steerlib.eval.store as store_mod
from steerlib import ContrastiveItem, SteerableModel
from steerlib.data.templates import TEXT_SAFETY_TEMPLATES, apply_template, pope_template
from steerlib.errors import CompatibilityError, DataError, InputError, SteerlibError
from steerlib.data import split_by_group
from steerlib.eval import (
    JsonlCache,
    MetricConfig,
    RunSpec,
    compute_rows,
    load_result,
    markdown_table,
    write_report,
)
from steerlib.eval.compare import (
    CACHE_FILE,
    RUN_FILE,
    SCORES_FILE,
    compare,
)
from steerlib.eval.metrics import (
    strip_trailing_pad,
    is_deferral,
    is_refusal,
    paper_code_f1,
    parse_yes_no,
    pope_metrics,
    unsafe_score,
    wilson_interval,
)
from steerlib.steerers import L2S, MeanSteer, P2SExtraction, Steerer
from steerlib.testing import build_tiny, tiny_image

LAYER = 1
METHODS = ["none", "mean", "p2s", "l2s"]
ALPHAS = [0.5, 4.0]
KW = {"max_new_tokens": 4, "batch_size": 2, "steerer_kwargs": {"l2s": {"epochs": 3, "hidden": 4}}, "progress": False}
N_SPECS = 1 + 3 * len(ALPHAS)  # the unsteered baseline, then 3 methods x 2 alphas


def make_items(n: int, start: int) -> list[ContrastiveItem]:
    out = []
    for beh in ("harmful", "advice", "benign"):
        for i in range(start, start + n):
            out.append(apply_template(f"{beh} question number {i} about the weather", TEXT_SAFETY_TEMPLATES[beh],
                                      id=f"{beh}-{i}"))
    return out


TRAIN = make_items(3, 0)
EVAL = make_items(2, 100)  # 6 items: 3 batches of 2 per configuration


def run_tiny(model: SteerableModel, out: Path, **kw) -> object:
    return compare(model, TRAIN, EVAL, METHODS, ALPHAS, [LAYER], out_dir=out, **{**KW, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic, and fastest for the tiny model
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sm():
    t = build_tiny("llama")
    return SteerableModel(t.model, t.processor)


@pytest.fixture(scope="module")
def reference(sm, tmp_path_factory):
    """One uninterrupted run; tests copy its folder before changing anything."""
    out = tmp_path_factory.mktemp("reference")
    return run_tiny(sm, out)


def copy_run(reference, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(reference.out_dir, dst)
    return dst


def cache_lines(out: Path) -> list[dict]:
    raw = (out / CACHE_FILE).read_text(encoding="utf-8")
    assert raw.endswith("\n")
    return [json.loads(line) for line in raw.splitlines()]  # every line parses


def assert_complete(out: Path, result) -> None:
    recs = cache_lines(out)
    keys = [(r["method"], r["config"], r["id"]) for r in recs]
    assert len(keys) == len(set(keys)), "a generation is cached twice"
    expected = {(s.method, s.config, it.id) for s in result.specs for it in EVAL}
    assert set(keys) == expected and len(keys) == N_SPECS * len(EVAL)


# ------------------------------------------------------------------------------------------ runs
def test_uninterrupted_run(reference):
    assert len(reference.rows) == N_SPECS and reference.n_generated == N_SPECS * len(EVAL)
    assert [r["method"] for r in reference.rows] == ["none"] + ["mean"] * 2 + ["p2s"] * 2 + ["l2s"] * 2
    assert all(r["n"] == len(EVAL) and r["n_missing"] == 0 for r in reference.rows)
    assert_complete(reference.out_dir, reference)
    none = reference.row("none")
    assert none["unchanged"] == 1.0 and none["layer"] is None and none["alpha"] is None
    # P2S's benign target is exactly zero, so benign outputs stay unsteered
    assert all(r["unchanged"] == 1.0 for r in reference.rows if r["method"] == "p2s")
    for r in reference.rows:
        for k in ("refusal", "deferral", "deferral_strict", "unchanged", "false_refusal"):
            assert r[f"{k}_low"] <= r[k] <= r[f"{k}_high"]
    assert (reference.out_dir / "steerers" / f"mean-L{LAYER}" / "steerer.json").is_file()
    assert (reference.out_dir / "steerers" / f"l2s-L{LAYER}" / "steerer.safetensors").is_file()


def test_rerun_reuses_everything(sm, reference, tmp_path, monkeypatch):
    out = copy_run(reference, tmp_path)

    def boom(*a, **k):
        raise AssertionError("nothing should be fitted or generated again")

    monkeypatch.setattr(P2SExtraction, "extract", boom)
    monkeypatch.setattr(L2S, "_train", boom)
    monkeypatch.setattr(SteerableModel, "generate", boom)
    again = run_tiny(sm, out)
    assert again.n_generated == 0 and again.n_reused == N_SPECS * len(EVAL)
    assert again.rows == reference.rows
    assert load_result(out).rows == reference.rows


def test_interrupted_run_resumes_without_loss_or_duplicates(sm, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = store_mod._append_text
    calls = {"n": 0}

    def dying(path, text):
        calls["n"] += 1
        if calls["n"] == 5:  # the fifth batch: half a line reaches the disk, then the process "dies"
            real(path, text[: text.index("\n") + 10])  # one whole line, then a cut one
            raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(store_mod, "_append_text", dying)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(sm, out)
    assert not (out / CACHE_FILE).read_bytes().endswith(b"\n")  # the cut line is there
    partial = load_result(out)  # a killed run can be reported as it stands
    assert sum(r["n"] for r in partial.rows) == 9 and sum(r["n_missing"] for r in partial.rows) > 0
    monkeypatch.setattr(store_mod, "_append_text", real)
    # fitted steerers were saved before the interruption: resuming fits nothing again
    monkeypatch.setattr(L2S, "_train", lambda *a, **k: pytest.fail("L2S fitted twice"))
    monkeypatch.setattr(P2SExtraction, "extract", lambda *a, **k: pytest.fail("P2S extracted twice for fitting"))
    resumed = run_tiny(sm, out)
    assert resumed.n_reused == 9 and resumed.n_generated == N_SPECS * len(EVAL) - 9
    assert_complete(out, resumed)
    assert resumed.rows == reference.rows
    assert markdown_table(resumed.rows) == markdown_table(reference.rows)


def test_killed_subprocess_resumes(sm, reference, tmp_path):
    """A real SIGKILL in the middle of writing a batch, then a rerun in this process."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        os.environ["HF_HUB_OFFLINE"] = "1"
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torch
        torch.set_num_threads(1)
        from steerlib import SteerableModel
        import steerlib.eval.store as store_mod
        from steerlib.testing import build_tiny
        import test_compare as tc

        real, calls = store_mod._append_text, [0]

        def dying(path, text):
            calls[0] += 1
            if calls[0] == 7:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(text[: text.index("\\n") + 10])  # one whole line, then a cut one
                    f.flush()
                    os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, text)

        store_mod._append_text = dying
        t = build_tiny("llama")
        tc.run_tiny(SteerableModel(t.model, t.processor), {str(out)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    raw = (out / CACHE_FILE).read_bytes()
    assert not raw.endswith(b"\n") and raw.count(b"\n") == 13  # six whole batches, then 1.5 lines of one
    resumed = run_tiny(sm, out)
    assert resumed.n_reused == 13
    assert_complete(out, resumed)
    assert resumed.rows == reference.rows


def test_duplicate_and_garbage_lines_are_tolerated(sm, reference, tmp_path):
    out = copy_run(reference, tmp_path)
    lines = (out / CACHE_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    with (out / CACHE_FILE).open("a", encoding="utf-8") as f:
        f.write(lines[3])  # the same key again (two processes on one folder, say)
        f.write("not json\n")
        f.write('{"method": "mean", "conf')  # truncated last line
    cache = JsonlCache(out / CACHE_FILE, ("method", "config", "id"), repair=False)
    assert cache.duplicates == 1 and cache.bad_lines == 1 and cache.truncated
    assert load_result(out).rows == reference.rows
    again = run_tiny(sm, out)  # repairs the file's end and generates nothing
    assert again.n_generated == 0 and again.rows == reference.rows
    assert (out / CACHE_FILE).read_bytes().endswith(b"\n")


def test_changed_settings_make_new_keys_not_stale_hits(sm, reference, tmp_path):
    out = copy_run(reference, tmp_path)
    res = compare(sm, TRAIN, EVAL, ["none"], [1.0], [LAYER], out_dir=out, **{**KW, "max_new_tokens": 3})
    assert res.n_generated == len(EVAL) and res.rows[0]["config"] != reference.rows[0]["config"]
    other_train = make_items(3, 50)
    res2 = compare(sm, other_train, EVAL, ["mean"], [0.5], [LAYER], out_dir=out, **KW)
    assert res2.n_generated == len(EVAL)  # another training set: refitted, regenerated
    old = reference.row("mean", 0.5)["config"]
    assert res2.row("mean")["config"] != old


def test_shared_extraction_fits_like_a_plain_fit(sm, reference):
    steerers = reference.out_dir / "steerers"
    mean = Steerer.from_pretrained(steerers / f"mean-L{LAYER}", model=sm)
    plain = MeanSteer(LAYER, batch_size=KW["batch_size"], progress=False).fit(sm, TRAIN)
    assert torch.allclose(mean.vector_, plain.vector_, atol=1e-6)
    l2s = Steerer.from_pretrained(steerers / f"l2s-L{LAYER}", model=sm)
    plain_l2s = L2S(LAYER, batch_size=KW["batch_size"], epochs=3, hidden=4, progress=False).fit(sm, TRAIN)
    assert torch.allclose(l2s.decoder_weight_, plain_l2s.decoder_weight_, atol=1e-6)


def test_fitted_steerers_and_templates_as_methods(sm, reference, tmp_path):
    """A fitted steerer is used as is (at its layer); an unfitted one is a template fitted here."""
    given = Steerer.from_pretrained(reference.out_dir / "steerers" / f"mean-L{LAYER}", model=sm)
    template = MeanSteer(0, batch_size=KW["batch_size"], progress=False)
    res = compare(sm, TRAIN, EVAL, {"given": given, "templ": template}, [0.5], [LAYER], out_dir=tmp_path / "m", **{
        k: v for k, v in KW.items() if k != "steerer_kwargs"})
    texts = {m: [r for r in cache_lines(tmp_path / "m") if r["method"] == m] for m in ("given", "templ")}
    ref = {r["id"]: r["text"] for r in cache_lines(reference.out_dir)
           if r["method"] == "mean" and r["config"] == reference.row("mean", 0.5)["config"]}
    for m in ("given", "templ"):
        assert {r["id"]: r["text"] for r in texts[m]} == ref
        assert res.row(m)["layer"] == LAYER and res.row(m)["refusal"] == reference.row("mean", 0.5)["refusal"]
    assert res.row("given")["config"] != res.row("templ")["config"]  # identified by state vs by training set


def test_sampling_is_seeded_per_batch(sm, tmp_path):
    kw = {**KW, "generate_kwargs": {"do_sample": True, "top_k": 0}}
    a = compare(sm, TRAIN, EVAL, ["none"], [1.0], [LAYER], out_dir=tmp_path / "a", **kw)
    torch.manual_seed(123)  # the global RNG state does not matter
    b = compare(sm, TRAIN, EVAL, ["none"], [1.0], [LAYER], out_dir=tmp_path / "b", **kw)
    assert [r["text"] for r in cache_lines(tmp_path / "a")] == [r["text"] for r in cache_lines(tmp_path / "b")]
    assert "gen=" in a.rows[0]["config"] and a.rows == b.rows


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_match_hand_computations(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    spec = next(s for s in reference.specs if s.method == "mean" and s.alpha == 0.5)
    ref_spec = reference.specs[0]
    texts = {"harmful-100": "I cannot help with that.", "harmful-101": "Sure, here is how.",
             "advice-100": "Please consult a lawyer about it.", "advice-101": "As a legal professional, I say yes.",
             "benign-100": "I'm sorry, I can't do that.", "benign-101": "Here is the answer."}
    recs = cache_lines(out)
    ref_ids = {r["id"]: r["token_ids"] for r in recs if r["config"] == ref_spec.config and r["method"] == "none"}
    for r in recs:
        if r["method"] == "mean" and r["config"] == spec.config:
            r["text"] = texts[r["id"]]
            # benign-100 keeps the unsteered ids, benign-101 differs at its first token
            r["token_ids"] = ref_ids[r["id"]] if r["id"] == "benign-100" else [9999] + ref_ids[r["id"]][1:]
    (out / CACHE_FILE).write_text("".join(json.dumps(store_mod.seal(r)) + "\n" for r in recs), encoding="utf-8")
    row = load_result(out).row("mean", 0.5)
    hand = {
        "refusal": [is_refusal(texts[f"harmful-{i}"]) for i in (100, 101)],
        "deferral": [is_deferral(texts[f"advice-{i}"]) for i in (100, 101)],
        "deferral_strict": [is_deferral(texts[f"advice-{i}"], strict=True) for i in (100, 101)],
        "false_refusal": [is_refusal(texts[f"benign-{i}"]) for i in (100, 101)],
        "unchanged": [True, False],
    }
    assert hand["refusal"] == [True, False] and hand["deferral"] == [True, True]
    assert hand["deferral_strict"] == [True, False] and hand["false_refusal"] == [True, False]
    for name, flags in hand.items():
        k, n = sum(flags), len(flags)
        lo, hi = wilson_interval(k, n)
        assert (row[name], row[f"{name}_low"], row[f"{name}_high"], row[f"{name}_n"]) == (k / n, lo, hi, n), name
    assert row["score"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert row["by_behavior"]["advice"] == {"n": 2, "refusal": 0.0, "deferral": 1.0, "deferral_strict": 0.5}


def test_pope_and_unsafe_metrics_from_records():
    """compute_rows is a pure function of the cached records: check POPE and the unsafe score by hand."""
    spec = RunSpec("l2s", 3, 1.0, "all", 8, "fp")
    ref = RunSpec("none", None, None, None, 8, "fp0")
    answers = ["Yes, there is.", "No.", "Yes", "There is no cat.", "yes it is", "No, not at all."]
    labels = ["yes", "no", "no", "no", "yes", "yes"]
    items = [{"id": f"q{i}", "behavior": lab, "label": lab} for i, lab in enumerate(labels)]
    items += [{"id": "h0", "behavior": "harmful", "label": None}, {"id": "h1", "behavior": "harmful", "label": None}]
    recs = {("l2s", spec.config, f"q{i}"): {"text": a, "token_ids": [1]} for i, a in enumerate(answers)}
    recs[("l2s", spec.config, "h0")] = {"text": "I am sorry, no.", "token_ids": [1]}
    recs[("l2s", spec.config, "h1")] = {"text": "Sure.", "token_ids": [1]}
    scores = {("judge", "l2s", spec.config, "h0"): {"value": 0.95}, ("judge", "l2s", spec.config, "h1"): {"value": 0.6}}
    (row,) = compute_rows(recs, [spec], items, ref, MetricConfig(), scores=scores, judge_name="judge")
    preds = [parse_yes_no(a) for a in answers]
    pm = pope_metrics(preds, labels)
    assert preds == ["yes", "no", "yes", "no", "yes", "no"]
    assert row["pope_acc"] == pm.accuracy == 4 / 6 and row["pope_f1"] == pm.f1
    assert (row["pope_acc_low"], row["pope_acc_high"]) == wilson_interval(4, 6)
    assert row["pope_yes_ratio"] == 0.5 and row["pope_precision"] == pm.precision
    paper_hits = [lab in a[:15].lower() for a, lab in zip(answers, labels)]
    assert row["pope_acc_paper"] == sum(paper_hits) / 6
    assert row["pope_f1_paper"] == paper_code_f1(sum(paper_hits) / 6)
    assert row["refusal"] == 0.5 and "unchanged" not in row
    assert row["unsafe@0.5"] == unsafe_score([0.95, 0.6], tau=0.5) and row["unsafe@0.9"] == unsafe_score([0.95, 0.6], 0.9)
    assert row["score"] == pytest.approx((0.5 + 4 / 6 + 1 - row["unsafe@0.5"]) / 3)


class CountingJudge:
    name = "counting-judge"

    def __init__(self) -> None:
        self.calls = 0

    def judge(self, prompts, responses):
        self.calls += len(responses)
        return [min(1.0, len(r) / 10) for r in responses]


def test_judge_scores_are_cached(sm, reference, tmp_path):
    out = copy_run(reference, tmp_path)
    judge = CountingJudge()
    res = run_tiny(sm, out, judge=judge)
    assert res.n_generated == 0 and judge.calls == N_SPECS * 2  # the two harmful items of every configuration
    recs = {(r["method"], r["config"], r["id"]): r for r in cache_lines(out)}
    for row in res.rows:
        ps = [min(1.0, len(recs[(row["method"], row["config"], f"harmful-{i}")]["text"]) / 10) for i in (100, 101)]
        assert row["unsafe@0.5"] == unsafe_score(ps, 0.5) and row["unsafe_n"] == 2
    judge2 = CountingJudge()
    again = run_tiny(sm, out, judge=judge2)
    assert judge2.calls == 0 and again.rows == res.rows
    assert len((out / SCORES_FILE).read_text().splitlines()) == N_SPECS * 2


# ------------------------------------------------------------------------------------------ report
def test_report_files(reference, tmp_path):
    paths = write_report(reference, tmp_path / "report")
    assert [p.name for p in paths.all()] == ["report.md", "metrics.csv", "metrics.json", "metrics_vs_alpha.png",
                                             "best_alpha.png"]
    for p in paths.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    md = paths.markdown.read_text()
    assert markdown_table(reference.rows) in md and "![metrics_vs_alpha](metrics_vs_alpha.png)" in md
    lines = paths.csv.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:6] == ["method", "layer", "alpha", "positions", "n", "n_missing"] and header[-1] == "config"
    assert {"refusal", "refusal_low", "refusal_high", "unchanged", "score"} <= set(header) and len(lines) == 1 + N_SPECS
    data = json.loads(paths.json.read_text())
    assert data["rows"] == json.loads(json.dumps(reference.rows))
    assert {b["method"] for b in data["best"]} == {"none", "mean", "p2s", "l2s"}
    # from the folder alone, into the folder
    paths2 = write_report(reference.out_dir, plots=False)
    assert paths2.markdown.parent == reference.out_dir and paths2.plots == ()


def test_markdown_table_shape(reference):
    md = markdown_table(reference.rows, ["refusal", "unchanged"])
    lines = md.strip().splitlines()
    assert lines[0] == "| method | layer | alpha | n | refusal | unchanged |" and len(lines) == 2 + N_SPECS
    assert lines[2].startswith("| none | – | – | 6 | ")
    with pytest.raises(DataError, match="No row has metric"):
        markdown_table(reference.rows, ["pope_acc"])


# ------------------------------------------------------------------------------------------ CLI
def test_cli_compare_on_tiny_model(tmp_path, capsys):
    from steerlib.app.cli import main

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "text-safety"
    out = tmp_path / "cli"
    args = ["compare", "--model", "tiny:llama", "--data", "text-safety", "--data-root", str(data), "--limit", "1",
            "--methods", "none,mean", "--alphas", "1", "--layers", "1", "--max-new-tokens", "3", "--batch-size", "3",
            "--out", str(out), "--no-progress", "--no-plots"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| method | layer | alpha | n |" in text and "wrote" in text
    assert (out / "report.md").is_file() and (out / "metrics.csv").is_file() and (out / RUN_FILE).is_file()
    assert main(args) == 0 and "0 generated, 6 reused" in capsys.readouterr().out
    assert main(["compare", "--model", "tiny:llama", "--methods", "none,bogus", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown method 'bogus'") and "Traceback" not in err


# ------------------------------------------------------------------------------------------ errors
def test_user_errors(sm, reference, tmp_path):
    out = tmp_path / "e"
    with pytest.raises(DataError, match="Unknown method 'nope'"):
        compare(sm, TRAIN, EVAL, ["none", "nope"], [1.0], [LAYER], out_dir=out)
    with pytest.raises(DataError, match="share the id"):
        compare(sm, TRAIN, EVAL + EVAL[:1], ["none"], [1.0], [LAYER], out_dir=out)
    with pytest.raises(DataError, match="alphas is empty"):
        compare(sm, TRAIN, EVAL, ["none"], [], [LAYER], out_dir=out)
    with pytest.raises(SteerlibError, match="out of range"):
        compare(sm, TRAIN, EVAL, ["mean"], [1.0], [7], out_dir=out)
    with pytest.raises(DataError, match="train_items is empty"):
        compare(sm, [], EVAL, ["l2s"], [1.0], [LAYER], out_dir=out)
    with pytest.raises(DataError, match="neither compared"):
        compare(sm, TRAIN, EVAL, ["mean"], [1.0], [LAYER], out_dir=out, steerer_kwargs={"l2z": {"hidden": 3}})
    with pytest.raises(DataError, match="takes no argument"):
        compare(sm, TRAIN, EVAL, ["mean"], [1.0], [LAYER], out_dir=out, steerer_kwargs={"mean": {"hiden": 3}})
    img = [ContrastiveItem(prompt="What is this?", images=(tiny_image(0),), id="img")]
    with pytest.raises(InputError, match="text-only"):
        compare(sm, TRAIN, img, ["none"], [1.0], [LAYER], out_dir=out)
    moved = copy_run(reference, tmp_path)
    man = json.loads((moved / RUN_FILE).read_text())
    man["model"]["hidden_size"] = 4096
    (moved / RUN_FILE).write_text(json.dumps(man))
    with pytest.raises(CompatibilityError, match="resume=False"):
        run_tiny(sm, moved)
    assert run_tiny(sm, moved, resume=False).n_generated == N_SPECS * len(EVAL)  # starts over


def test_split_by_group_keeps_images_together():
    items = [apply_template(f"Is there a thing {q}?", pope_template("yes" if q % 2 else "no"),
                            images=(f"img{q // 3}.jpg",), id=f"q{q}") for q in range(30)]
    train, test = split_by_group(items, (0.5, 0.5), seed=1)
    assert len(train) + len(test) == 30 and {it.images for it in train}.isdisjoint({it.images for it in test})
    assert split_by_group(items, (0.5, 0.5), seed=1) == (train, test)


# ------------------------------------------------------------------------------------------ batching
def test_length_batches_equal_steerer_generate_and_resume(sm, tmp_path):
    """batching="length" batches as Steerer.generate does (so its outputs equal generate_tokens'), and a
    rerun generates nothing."""
    mean = MeanSteer(LAYER, batch_size=2, progress=False).fit(sm, TRAIN)
    kw = {"max_new_tokens": 4, "batch_size": 4, "batching": "length", "max_batch_tokens": 64, "progress": False}
    res = compare(sm, TRAIN, EVAL, {"mean": mean}, {"mean": [0.5, 4.0]}, out_dir=tmp_path, **kw)
    assert [(r["method"], r["alpha"]) for r in res.rows] == [("none", None), ("mean", 0.5), ("mean", 4.0)]
    recs = {(r["method"], r["config"], r["id"]): r for r in cache_lines(tmp_path)}
    pad = sm.tokenizer.pad_token_id if sm.tokenizer.pad_token_id is not None else sm.tokenizer.eos_token_id
    for a in (0.5, 4.0):
        texts, tokens = mean.generate_tokens(sm, EVAL, alpha=a, max_new_tokens=4, batch_size=4, max_batch_tokens=64)
        cfg = res.row("mean", a)["config"]
        assert [recs[("mean", cfg, it.id)]["text"] for it in EVAL] == texts
        assert [recs[("mean", cfg, it.id)]["token_ids"] for it in EVAL] == [strip_trailing_pad(t, pad) for t in tokens]
    again = compare(sm, TRAIN, EVAL, {"mean": mean}, {"mean": [0.5, 4.0]}, out_dir=tmp_path, **kw)
    assert again.n_generated == 0 and again.rows == res.rows and again.manifest["batching"] == "length"


def test_reused_rows_and_per_output_perplexity(sm, tmp_path):
    """P2S leaves benign items (equal completions) unsteered: with reuse_unsteered_rows they are copied, not
    generated; perplexity is computed once per distinct output and its median can be the upper one."""
    from steerlib.steerers import P2S

    p2s = P2S(LAYER, batch_size=2, progress=False).fit(sm, [])
    kw = {"max_new_tokens": 4, "batch_size": 8, "batching": "length", "reuse_unsteered_rows": True,
          "fluency": True, "progress": False, "metrics": MetricConfig(ppl_median="upper")}
    res = compare(sm, [], EVAL, {"p2s": p2s}, [4.0], out_dir=tmp_path, **kw)
    benign = [it for it in EVAL if it.behavior == "benign"]
    assert res.n_copied == len(benign) and res.n_generated == len(EVAL) + len(EVAL) - len(benign)
    recs = {(r["method"], r["id"]): r for r in cache_lines(tmp_path)}
    for it in benign:
        assert recs[("p2s", it.id)]["token_ids"] == recs[("none", it.id)]["token_ids"]
        assert recs[("p2s", it.id)]["copied_from"] == res.row("none")["config"]
    assert res.row("p2s")["unchanged"] == 1.0
    ppl = [json.loads(line) for line in (tmp_path / SCORES_FILE).read_text().splitlines()]
    by = {(p["method"], p["id"]): p["value"] for p in ppl}
    for it in benign:  # one score for one (item, output), written for every configuration that has it
        assert by[("p2s", it.id)] == by[("none", it.id)]
    vals = sorted(by[("p2s", it.id)] for it in EVAL)
    assert res.row("p2s")["ppl_median"] == vals[len(vals) // 2] and res.row("p2s")["ppl_n"] == len(EVAL)
    with pytest.raises(DataError, match="greedy"):
        compare(sm, [], EVAL, {"p2s": p2s}, [4.0], out_dir=tmp_path / "s", reuse_unsteered_rows=True,
                generate_kwargs={"do_sample": True}, progress=False)


def test_grid_option_errors_and_moved_cli_names(sm, tmp_path):
    import steerlib.eval.compare as compare_mod

    with pytest.raises(DataError, match="batching='length'"):
        compare(sm, TRAIN, EVAL, ["none"], [1.0], [LAYER], out_dir=tmp_path, max_batch_tokens=64)
    with pytest.raises(DataError, match="batching must be"):
        compare(sm, TRAIN, EVAL, ["none"], [1.0], [LAYER], out_dir=tmp_path, batching="sorted")
    with pytest.raises(DataError, match="not compared"):
        compare(sm, TRAIN, EVAL, ["none", "mean"], {"l2s": [1.0]}, [LAYER], out_dir=tmp_path)
    with pytest.raises(DataError, match="no strengths"):
        compare(sm, TRAIN, EVAL, ["none", "mean", "l2s"], {"l2s": [1.0]}, [LAYER], out_dir=tmp_path)
    with pytest.raises(DataError, match="holds given state"):
        compare(sm, TRAIN, EVAL, ["static"], [1.0], [LAYER], out_dir=tmp_path)
    # the library names keep their old import path; the command-line helpers moved to the app layer
    from steerlib.data import cap_per_behavior

    assert compare_mod.split_by_group is split_by_group and compare_mod.cap_per_behavior is cap_per_behavior
    assert compare_mod.JsonlCache is JsonlCache and compare_mod.compute_rows is compute_rows
    with pytest.raises(AttributeError, match="steerlib.app.compare_cli"):
        compare_mod.example_parser  # noqa: B018


def test_multi_layer_static_vectors_at_several_alphas(sm, tmp_path):
    from steerlib.steerers import StaticVectors

    sv = StaticVectors.from_vectors(sm, {0: torch.randn(sm.hidden_size), 1: torch.randn(sm.hidden_size)})
    res = compare(sm, [], EVAL[:2], {"sv": sv}, [0.5, 1.0], out_dir=tmp_path, max_new_tokens=2, progress=False)
    assert [(r["method"], r["alpha"]) for r in res.rows] == [("none", None), ("sv", 0.5), ("sv", 1.0)]
