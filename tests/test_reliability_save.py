"""Saving: atomic replace (a kill at random moments never leaves the path without a complete
folder), concurrent savers (one wins, the other gets ConcurrentWriteError), and every OS failure
of a write as a PersistenceError naming the path and the fix."""

from __future__ import annotations

import errno
import os
import random
import signal
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import steerlib.persistence as persistence
from steerlib import SteerableModel
from steerlib.errors import ConcurrentWriteError, NonFiniteError, PersistenceError, SteerlibError
from steerlib.steerers import L2S, MeanSteer, Steerer
from steerlib.testing import build_tiny
from steerlib.testing.bad_inputs import toy_items as _items


@pytest.fixture(scope="module")
def sm() -> SteerableModel:
    t = build_tiny("llama")
    return SteerableModel(t.model, t.processor)


@pytest.fixture(scope="module")
def pair(sm):
    """Two different fitted steerers (alpha 1 and 2, different vectors)."""
    a = MeanSteer(1, alpha=1.0, progress=False).fit(sm, _items(6))
    b = MeanSteer(1, alpha=2.0, progress=False).fit(sm, _items(4))
    assert not torch.equal(a.vector_, b.vector_)
    return a, b


def _which(path: Path, pair) -> int:
    """0 or 1: which of the pair the folder at ``path`` holds (complete and loadable), else fail."""
    st = Steerer.from_pretrained(path)
    for k, ref in enumerate(pair):
        if st.alpha == ref.alpha and torch.equal(st.vector_, ref.vector_):
            return k
    raise AssertionError(f"{path} holds neither steerer (alpha {st.alpha})")


def _save_loop(target: Path, pair, start: int) -> None:
    """Child body: save the pair alternately, forever (until killed)."""
    k = start
    while True:
        pair[k % 2].save_pretrained(target, overwrite=True)
        k += 1


def test_overwrite_uses_one_atomic_exchange(pair, tmp_path, monkeypatch):
    """On Linux the old folder is swapped with the new one by renameat2(RENAME_EXCHANGE): no
    instant without a complete folder (the fallback's two renames are never used)."""
    target = tmp_path / "st"
    pair[0].save_pretrained(target)
    calls = []
    real = persistence._renameat2
    monkeypatch.setattr(persistence, "_renameat2", lambda a, b, f: calls.append(f) or real(a, b, f))
    monkeypatch.setattr(persistence.os, "replace", lambda *a: pytest.fail("fallback rename used"))
    pair[1].save_pretrained(target, overwrite=True)
    assert calls == [persistence.RENAME_EXCHANGE]
    assert _which(target, pair) == 1
    assert sorted(os.listdir(tmp_path)) == ["st"]  # the old folder and the lock file are gone


def test_sigkill_at_random_moments_leaves_old_or_new_complete_folder(pair, tmp_path):
    """A process saving repeatedly is SIGKILLed at 20 random moments; after each kill the folder
    loads as one of the two steerers, and the next save (stale lock file and temporary folders
    left by the killed process) works and cleans up."""
    target = tmp_path / "st"
    pair[0].save_pretrained(target)
    rng = random.Random(0)
    seen, mid_save = [], 0
    for i in range(20):
        pid = os.fork()
        if pid == 0:  # child
            try:
                _save_loop(target, pair, i)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        left = [p.name for p in tmp_path.iterdir() if p.name != "st"]
        mid_save += bool(left)
        seen.append(_which(target, pair))
    assert mid_save >= 1, "no kill landed during a save"
    print(f"kills: 20, landed mid-save: {mid_save}, folder held old/new: {seen.count(0)}/{seen.count(1)}")
    pair[1].save_pretrained(target, overwrite=True)
    assert _which(target, pair) == 1
    assert sorted(os.listdir(tmp_path)) == ["st"]


def test_second_saver_gets_a_clear_error_and_the_folder_is_untouched(pair, tmp_path):
    """Another process holds the save lock (it is saving): this save refuses, nothing changes."""
    target = tmp_path / "st"
    pair[0].save_pretrained(target)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # never return into pytest from a forked child
        try:
            with persistence.save_lock(target):
                os.write(w, b"x")
                time.sleep(3)
        finally:
            os._exit(0)
    os.read(r, 1)
    try:
        with pytest.raises(ConcurrentWriteError, match="Another process is saving to .* right now.*save again"):
            pair[1].save_pretrained(target, overwrite=True)
        assert _which(target, pair) == 0
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    pair[1].save_pretrained(target, overwrite=True)  # once it is gone, saving works
    assert _which(target, pair) == 1


def test_two_processes_saving_concurrently(pair, tmp_path):
    """Two processes save 25 times each to one folder at the same time: each save either
    succeeds or raises ConcurrentWriteError (nothing else), and one complete folder results."""
    target = tmp_path / "st"
    pair[0].save_pretrained(target)
    pids = []
    for k in (0, 1):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for _ in range(25):
                    try:
                        pair[k].save_pretrained(target, overwrite=True)
                    except ConcurrentWriteError:
                        (tmp_path / f"conflict-{k}-{time.monotonic_ns()}").touch()
            except BaseException:
                (tmp_path / f"error-{k}.txt").write_text(traceback.format_exc())
                code = 1
            os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    errors = [p.read_text() for p in tmp_path.glob("error-*.txt")]
    assert codes == [0, 0], errors
    print(f"concurrent saves: {len(list(tmp_path.glob('conflict-*')))} of 50 refused as concurrent")
    assert _which(target, pair) in (0, 1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".st.")]


def test_first_save_never_replaces_what_appeared(pair, tmp_path):
    target = tmp_path / "st"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(PersistenceError, match="already exists"):
        pair[0].save_pretrained(target)
    assert (target / "mine.txt").read_text() == "keep"


# ---------------------------------------------------------------------- write errors -------
@pytest.mark.parametrize("code, phrase", [
    (errno.EROFS, "read-only"), (errno.ENOSPC, "full"), (errno.EACCES, "permission"),
    (errno.EDQUOT, "full"), (errno.ENAMETOOLONG, "too long")])
def test_os_errors_while_saving_name_the_path_and_fix(pair, tmp_path, monkeypatch, code, phrase):
    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(persistence, "save_file", fail)
    with pytest.raises(PersistenceError, match=phrase) as ei:
        pair[0].save_pretrained(tmp_path / "st")
    assert str(tmp_path / "st") in str(ei.value)
    assert os.listdir(tmp_path) == []


def test_dangling_symlink_nul_byte_and_file_in_the_way(pair, tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(PersistenceError, match="symlink to .*nowhere.*does not exist"):
        pair[0].save_pretrained(tmp_path / "gone" / "st")
    with pytest.raises(PersistenceError, match="symlink to .*does not exist"):
        pair[0].save_pretrained(tmp_path / "gone")
    with pytest.raises(PersistenceError, match="NUL byte"):
        pair[0].save_pretrained(str(tmp_path / "a\x00b"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(PersistenceError, match="file is in the way|not a folder"):
        pair[0].save_pretrained(tmp_path / "file" / "st")
    with pytest.raises(PersistenceError, match="exists and is not a folder"):
        pair[0].save_pretrained(tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text() == "x"


def test_real_read_only_folder(pair, tmp_path):
    """A real EACCES where the OS enforces it (skipped as root, who may write anywhere)."""
    if os.geteuid() == 0:
        pytest.skip("root bypasses permissions; the errno path is covered by the simulated cases")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PersistenceError, match="permission"):
            pair[0].save_pretrained(ro / "st")
    finally:
        ro.chmod(0o755)


def test_a_steerer_with_nan_weights_is_not_saved(sm, tmp_path):
    st = L2S(1, hidden=4, epochs=2, progress=False).fit(sm, _items())
    with torch.no_grad():
        st.net_.decoder.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="decoder_weight_"):
        st.save_pretrained(tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_gguf_and_report_writes_are_wrapped(pair, tmp_path):
    pytest.importorskip("gguf")
    from steerlib.export import export_gguf

    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(PersistenceError, match="symlink"):
        export_gguf({1: torch.ones(64)}, tmp_path / "gone" / "x.gguf", model_hint="llama")
    with pytest.raises(PersistenceError, match="NUL byte"):
        export_gguf({1: torch.ones(64)}, str(tmp_path / "x\x00.gguf"), model_hint="llama")
    with pytest.raises(NonFiniteError, match="float32"):
        export_gguf({1: torch.ones(64)}, tmp_path / "big.gguf", model_hint="llama", alpha=1e39)
    with pytest.raises(NonFiniteError, match="float32"):
        export_gguf({1: torch.full((64,), 1e37)}, tmp_path / "big.gguf", model_hint="llama", alpha=100.0)
    assert not (tmp_path / "big.gguf").exists()


def test_write_boundary_keeps_other_errors_as_they_are(tmp_path):
    with pytest.raises(KeyError):
        with persistence.writing(tmp_path / "x"):
            raise KeyError("internal bug")  # not a user's mistake: the traceback stays
    assert issubclass(ConcurrentWriteError, SteerlibError)
