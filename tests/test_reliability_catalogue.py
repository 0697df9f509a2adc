"""The bad-input catalogue (steerlib.testing.bad_inputs): every case is handled cleanly (a
SteerlibError naming the problem and fix, or, for survival scenarios, the saved work intact);
none gives a traceback, is silently accepted, loses data, reads outside or reads before checking."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from steerlib.errors import SteerlibError
from steerlib.testing import bad_inputs as B


@pytest.fixture(scope="module")
def results():
    return B.run_catalogue()


def test_every_case_is_clean(results):
    bad = [f"{outcome}: [{c.kind}] {c.description}: {msg}" for c, outcome, msg in results if outcome != "clean"]
    assert not bad, "\n".join(bad)
    assert len(results) >= 100
    assert all(sum(v.values()) for v in B.counts(results).values())  # every kind has cases


def test_refusals_name_problem_and_fix(results):
    """A clean refusal's message is a sentence with a fix in it, not a bare exception name."""
    for c, outcome, msg in results:
        if c.survives:
            continue
        assert ": " in msg and len(msg) > 40, (c.description, msg)


def test_the_classifier_itself():
    """The outcomes are what the runner says: a refusal, a traceback, acceptance, data loss."""
    ws = B.Workspace(Path(os.environ.get("TMPDIR", "/tmp")))
    cases = {"clean": lambda ws: (_ for _ in ()).throw(SteerlibError("refused: do X")),
             "traceback": lambda ws: 1 / 0, "silently accepted": lambda ws: None,
             "data lost": lambda ws: (_ for _ in ()).throw(B.DataLost("gone")),
             "read outside": lambda ws: (_ for _ in ()).throw(B.ReadOutside("read")),
             "read before check": lambda ws: (_ for _ in ()).throw(B.ReadBeforeCheck("read"))}
    for want, fn in cases.items():
        assert B.run_case(B.Case("silently wrong", want, fn), ws)[0] == want
    assert B.run_case(B.Case("silently wrong", "ok", lambda ws: None, survives=True), ws)[0] == "clean"
    with pytest.raises(ValueError, match="unknown kind"):
        B.register("no such kind", "x", lambda ws: None)


def test_script_prints_the_counts(results, monkeypatch, capsys):
    """scripts/bad_inputs.py's table (fed the results above instead of running them again)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bad_inputs_script", root / "scripts" / "bad_inputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "run_catalogue", lambda: results)
    assert mod.main(["--markdown"]) == 0
    out = capsys.readouterr().out
    assert f"| **all** | **{len(results)}** | {len(results)} | 0 | 0 | 0 | 0 | 0 | 0 |" in out
    for kind in B.KINDS:
        assert f"| {kind} |" in out
