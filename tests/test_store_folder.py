"""The compare folder: ``resume=False`` (``--no-resume``) deletes only what compare wrote and refuses
a folder compare did not write; a second run on a folder in use is refused while the first holds
its lock (another process, a real ``fcntl`` lock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_compare as tc  # noqa: E402
from test_compare import one_thread, reference, sm  # noqa: E402,F401  (test_compare's fixtures: one thread, the tiny llama, its reference run)

from steerlib.errors import PersistenceError, SteerlibError  # noqa: E402
from steerlib.eval.compare import CACHE_FILE, RUN_FILE, compare  # noqa: E402
from steerlib.eval.store import LOCK_FILE, folder_lock  # noqa: E402

TOTAL = tc.N_SPECS * len(tc.EVAL)
ROOT = Path(__file__).resolve().parents[1]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def small(sm, out: Path, **kw):
    return compare(sm, tc.TRAIN, tc.EVAL, ["none"], [1.0], [tc.LAYER], out_dir=out, **{**tc.KW, **kw})


def test_no_resume_refuses_a_folder_compare_did_not_write(sm, tmp_path):
    home = tmp_path / "home"
    (home / "steerers").mkdir(parents=True)
    (home / "thesis.tex").write_text("four years of work")
    (home / "generations.jsonl").write_text("my own notes, one a line\n")
    (home / "steerers" / "mine-L1").mkdir()
    (home / "steerers" / "mine-L1" / "steerer.json").write_text("{}")
    before = tree(home)
    with pytest.raises(PersistenceError, match="not a compare folder"):
        small(sm, home, resume=False)
    assert tree(home) == before  # nothing deleted, nothing written (not even the lock)
    with pytest.raises(PersistenceError, match="was not written by compare"):
        small(sm, home)  # resuming there would rewrite the foreign generations.jsonl: refused too
    assert tree(home) == before
    (home / RUN_FILE).write_text(json.dumps({"format": "someone-else", "files": ["thesis.tex"]}))
    before = tree(home)
    with pytest.raises(PersistenceError, match="not written by steerlib compare"):
        small(sm, home, resume=False)
    assert tree(home) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert small(sm, empty, resume=False).n_generated == len(tc.EVAL)  # an empty folder is fine


def test_no_resume_deletes_only_what_compare_listed(sm, reference, tmp_path):
    out = tc.copy_run(reference, tmp_path)
    man = json.loads((out / RUN_FILE).read_text())
    assert {CACHE_FILE, RUN_FILE, "steerers/mean-L1", "steerers/l2s-L1"} <= set(man["written"])
    (out / "notes.md").write_text("mine")
    (out / "steerers" / "handmade-L1").mkdir()
    (out / "steerers" / "handmade-L1" / "steerer.json").write_text("{}")
    victim = tmp_path / "victim.txt"
    victim.write_text("outside")
    (out / "link.jsonl").symlink_to(victim)
    man["written"] += ["notes.md", "../victim.txt", "/etc/hostname", "link.jsonl", "steerers/../notes.md"]
    (out / RUN_FILE).write_text(json.dumps(man))  # a hand-edited manifest cannot widen what is deleted
    res = tc.run_tiny(sm, out, resume=False)
    assert res.n_generated == TOTAL and res.n_reused == 0 and res.rows == reference.rows
    assert (out / "notes.md").read_text() == "mine" and victim.read_text() == "outside"
    assert (out / "steerers" / "handmade-L1" / "steerer.json").is_file() and (out / "link.jsonl").is_symlink()


def test_no_resume_on_a_format_1_folder_deletes_its_known_files(sm, reference, tmp_path):
    out = tc.copy_run(reference, tmp_path)
    man = json.loads((out / RUN_FILE).read_text())
    for k in ("written", "steerers", "store", "model_fingerprint"):
        man.pop(k)
    man["format_version"] = 1
    (out / RUN_FILE).write_text(json.dumps(man))
    (out / "notes.md").write_text("mine")
    res = tc.run_tiny(sm, out, resume=False)
    assert res.n_generated == TOTAL and (out / "notes.md").read_text() == "mine"


HOLDER = textwrap.dedent("""
    import sys, time
    from steerlib.eval.store import folder_lock
    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def test_a_second_run_on_a_folder_in_use_is_refused(sm, reference, tmp_path):
    out = tc.copy_run(reference, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "60"], stdout=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = tree(out)
        with pytest.raises(PersistenceError, match=r"in use by another compare run \(pid \d+"):
            tc.run_tiny(sm, out)
        with pytest.raises(PersistenceError, match="in use"):
            tc.run_tiny(sm, out, resume=False)  # and above all nothing is deleted under the other run
        assert {k: v for k, v in tree(out).items() if k != LOCK_FILE} == \
            {k: v for k, v in before.items() if k != LOCK_FILE}
    finally:
        holder.kill()
        holder.wait()
    res = tc.run_tiny(sm, out)  # the lock dies with its holder
    assert res.n_generated == 0 and res.rows == reference.rows
    with folder_lock(out):  # and is released when a run ends
        pass


def test_lock_is_per_folder_and_reentrant_runs_in_one_process_are_refused(sm, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with folder_lock(a):
        assert small(sm, b).n_generated == len(tc.EVAL)  # another folder is free
        with pytest.raises(SteerlibError, match="in use"):
            small(sm, a)
    assert small(sm, a).n_generated == len(tc.EVAL)


def test_a_format_1_folder_is_still_reported_and_regenerated_when_resumed(sm, reference, tmp_path):
    from steerlib.eval import load_result

    out = tc.copy_run(reference, tmp_path)
    man = json.loads((out / RUN_FILE).read_text())
    man["format_version"] = 1
    (out / RUN_FILE).write_text(json.dumps(man))
    old = [{k: v for k, v in json.loads(x).items() if k not in ("sha", "item")}
           for x in (out / CACHE_FILE).read_text().splitlines()]
    (out / CACHE_FILE).write_text("".join(json.dumps(r) + "\n" for r in old))
    assert load_result(out).rows == reference.rows  # read as written (no checksums then)
    res = tc.run_tiny(sm, out)  # resuming: unsealed records are not trusted, they are set aside and redone
    assert res.n_rejected == TOTAL and res.n_generated == TOTAL and res.rows == reference.rows
