"""A catalogue of bad inputs and faults, run against the library, each classified by outcome.

Every case is ``(kind, description, callable)``. The callable gets a :class:`Workspace` (a fresh
temporary folder, and a tiny model and fitted steerers shared by all cases) and does one bad
thing. Its outcome is:

* ``clean``: it raised a :class:`~steerlib.errors.SteerlibError` (a refusal naming problem and fix);
* ``traceback``: it raised anything else (a user would see a traceback);
* ``silently accepted``: it returned (the library took the bad input);
* ``data lost``: it raised :class:`DataLost` (its own check found saved work gone);
* ``read outside``: it raised :class:`ReadOutside` (the library returned or read a file outside
  the folder it was given);
* ``read before check``: it raised :class:`ReadBeforeCheck` (the library read far more than it
  needed to refuse);
* ``hang``: it was still running after :data:`CASE_TIMEOUT_S` seconds (stopped by SIGALRM).

A case checks its own postcondition in a ``finally`` (e.g. "the previous folder is intact"), so
a refusal that also lost data is counted as ``data lost``. The catalogue grows by registration:
``@case(kind, description)`` on a function, or :func:`register`, from any module that is imported
before :func:`run_catalogue` (``scripts/bad_inputs.py`` prints the counts; the test
``tests/test_reliability_catalogue.py`` asserts every case is clean). Kinds are the defect kinds
of issue 21 (:data:`KINDS`); add a kind by adding it there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import torch

KINDS: tuple[str, ...] = ("silently wrong", "saved work lost", "read outside", "memory before check",
                          "traceback for a user mistake")
Outcome = Literal["clean", "traceback", "silently accepted", "data lost", "read outside", "read before check",
                  "hang"]
OUTCOMES: tuple[str, ...] = ("clean", "traceback", "silently accepted", "data lost", "read outside",
                             "read before check", "hang")
CASE_TIMEOUT_S = int(os.environ.get("STEERLIB_CASE_TIMEOUT_S", "20"))
"""A case still running after this long is stopped and counted as a ``hang`` (e.g. a read
blocking on a FIFO)."""


class _Hang(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang()


class DataLost(AssertionError):
    """Raised by a case whose check finds saved work gone or damaged."""


class ReadOutside(AssertionError):
    """Raised by a case whose check finds a file outside the given folder read or returned."""


class ReadBeforeCheck(AssertionError):
    """Raised by a case whose check finds the library read (much) more than it needed to refuse."""


@dataclass(frozen=True)
class Case:
    kind: str
    description: str
    run: Callable[["Workspace"], Any]
    survives: bool = False
    """A scenario whose right outcome is to return (its own checks raise DataLost, ...), not a refusal."""


CATALOGUE: dict[str, list[Case]] = {k: [] for k in KINDS}
"""kind -> its cases, in registration order (one list per kind)."""


def register(kind: str, description: str, fn: Callable[["Workspace"], Any], *, survives: bool = False) -> Case:
    """Add a case to :data:`CATALOGUE` (``kind`` one of :data:`KINDS`; ``survives``: returning is
    the clean outcome, for scenarios such as a kill loop whose checks are inside)."""
    if kind not in CATALOGUE:
        raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
    c = Case(kind, description, fn, survives)
    CATALOGUE[kind].append(c)
    return c


def case(kind: str, description: str) -> Callable[[Callable[["Workspace"], Any]], Callable[["Workspace"], Any]]:
    """Decorator form of :func:`register`."""
    def deco(fn: Callable[["Workspace"], Any]) -> Callable[["Workspace"], Any]:
        register(kind, description, fn)
        return fn
    return deco


def toy_items(n: int = 6) -> list[Any]:
    """``n`` contrastive items alternating harmful (refusal target) and benign, for tiny-model cases."""
    from ..data.items import ContrastiveItem

    return [ContrastiveItem(prompt=f"Question {i} about the {'cat' if i % 2 else 'weather'}",
                            positive="I cannot help with that.", negative="Sure, here is how.",
                            behavior=("harmful", "benign")[i % 2]) for i in range(n)]


@dataclass
class Workspace:
    """What cases share: a tiny llama and fitted steerers (built once), a fresh folder per case."""

    root: Path
    tmp: Path = field(init=False)
    _cache: dict[str, Any] = field(default_factory=dict)

    def fresh(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(dir=self.root))
        return self.tmp

    @property
    def sm(self) -> Any:
        if "sm" not in self._cache:
            from ..engine import SteerableModel
            from .tiny import build_tiny

            t = build_tiny("llama")
            self._cache["sm"] = SteerableModel(t.model, t.processor)
        return self._cache["sm"]

    items = staticmethod(toy_items)

    def fitted(self, name: str) -> Any:
        """A fitted steerer: ``"mean"``, ``"mean2"`` (another alpha and vector) or ``"l2s"``."""
        if name not in self._cache:
            from ..steerers import L2S, MeanSteer

            self._cache[name] = {
                "mean": lambda: MeanSteer(1, alpha=2.0, progress=False).fit(self.sm, self.items()),
                "mean2": lambda: MeanSteer(1, alpha=3.0, progress=False).fit(self.sm, self.items(4)),
                "l2s": lambda: L2S(1, hidden=8, epochs=3, progress=False).fit(self.sm, self.items()),
            }[name]()
        return self._cache[name]

    def saved(self, name: str = "mean") -> Path:
        """A fresh copy of a saved folder of :meth:`fitted` ``name``, in this case's folder."""
        key = f"saved-{name}"
        if key not in self._cache:
            self._cache[key] = self.fitted(name).save_pretrained(self.root / key)
        return Path(shutil.copytree(self._cache[key], self.tmp / name))

    def load(self, path: Path) -> Any:
        from ..steerers import Steerer

        return Steerer.from_pretrained(path, model=self.sm)

    def secret(self) -> Path:
        """A private file outside every folder a case gives the library."""
        d = self.tmp / "private"
        d.mkdir(exist_ok=True)
        (d / "holiday.png").write_bytes(b"\x89PNG private")
        return d / "holiday.png"


def run_case(c: Case, ws: Workspace) -> tuple[Outcome, str]:
    """Run one case in a fresh folder; (outcome, the exception's one-line text or '')."""
    from ..errors import SteerlibError

    ws.fresh()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        c.run(ws)
    except _Hang:
        return "hang", f"still running after {CASE_TIMEOUT_S} s"
    except DataLost as e:
        return "data lost", str(e)
    except ReadOutside as e:
        return "read outside", str(e)
    except ReadBeforeCheck as e:
        return "read before check", str(e)
    except SteerlibError as e:
        return "clean", f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - the point is to classify it
        return "traceback", f"{type(e).__name__}: {e}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        shutil.rmtree(ws.tmp, ignore_errors=True)
    return ("clean", "survived") if c.survives else ("silently accepted", "")


def run_catalogue(kinds: tuple[str, ...] | None = None) -> list[tuple[Case, Outcome, str]]:
    """Run every registered case (of ``kinds``); returns (case, outcome, message) per case."""
    out = []
    with tempfile.TemporaryDirectory(prefix="steerlib-bad-inputs-") as d:
        ws = Workspace(Path(d))
        for kind in kinds or KINDS:
            for c in CATALOGUE[kind]:
                outcome, msg = run_case(c, ws)
                out.append((c, outcome, msg))
    return out


def counts(results: list[tuple[Case, Outcome, str]]) -> dict[str, Counter[str]]:
    """kind -> Counter of outcomes."""
    table: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    for c, outcome, _ in results:
        table[c.kind][outcome] += 1
    return table


# =============================================================================================
# The cases
# =============================================================================================

def _meta_edit(path: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    meta = json.loads((path / "steerer.json").read_text())
    fn(meta)
    (path / "steerer.json").write_text(json.dumps(meta))  # NaN / Infinity literals when present


def _set_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path / "steerer.safetensors"))


def _header_file(path: Path, header: dict[str, Any], data_len: int) -> None:
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + data_len)


def _generate(ws: Workspace, st: Any, **kw: Any) -> Any:
    return st.generate(ws.sm, ["Hello there"], max_new_tokens=2, progress=False, **kw)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


@contextlib.contextmanager
def _intact(folder: Path) -> Iterator[None]:
    """The folder's files must be byte-identical afterwards (else DataLost)."""
    before = _snapshot(folder)
    try:
        yield
    finally:
        if _snapshot(folder) != before:
            raise DataLost(f"{folder} changed or vanished")


def _outside_check(items: list[Any], folder: Path) -> None:
    real = os.path.realpath(folder)
    for it in items:
        for im in it.images:
            p = os.path.realpath(str(im))
            if not p.startswith(real + os.sep):
                raise ReadOutside(f"item {it.id} refers to {p}, outside {folder}")


# ---------------------------------------------------------------------- silently wrong -----
def _l2s_nan_saved(ws: Workspace) -> None:
    p = ws.saved("l2s")
    from ..persistence import read_safetensors_checked

    t = read_safetensors_checked(p / "steerer.safetensors")
    t["decoder_weight_"][0, 0] = float("nan")
    _set_tensors(p, t)
    _generate(ws, ws.load(p))


register("silently wrong", "L2S whose saved g weights are NaN", _l2s_nan_saved)
register("silently wrong", "L2S saved with gate_norm = Infinity",
         lambda ws: ws.load(_edit_ret(ws.saved("l2s"), lambda m: m["state"].__setitem__("gate_norm", math.inf))))
register("silently wrong", "L2S saved with gate_norm = -1",
         lambda ws: ws.load(_edit_ret(ws.saved("l2s"), lambda m: m["state"].__setitem__("gate_norm", -1.0))))
register("silently wrong", "L2S saved with gate_norm = 1e999 (overflows to inf)",
         lambda ws: ws.load(_text_ret(ws.saved("l2s"), '"gate_norm": ', '"gate_norm": 1e999, "x_": ')))
register("silently wrong", "Mean-S saved with alpha = NaN",
         lambda ws: ws.load(_edit_ret(ws.saved("mean"), lambda m: m.__setitem__("alpha", math.nan))))
register("silently wrong", "steerer.json with a duplicate key (alpha twice)",
         lambda ws: ws.load(_text_ret(ws.saved("mean"), '"alpha": 2.0', '"alpha": 2.0, "alpha": 9.0')))
register("silently wrong", "Mean-S saved vector holds +inf",
         lambda ws: ws.load(_tensor_ret(ws.saved("mean"), {"vector_": torch.full((64,), math.inf)})))
register("silently wrong", "alpha = 1e39 with float32 hidden states",
         lambda ws: _generate(ws, ws.fitted("mean"), alpha=1e39))
register("silently wrong", "alpha x vector norm overflows float32 (alpha 1e38, norm 8)",
         lambda ws: ws.sm.generate(ws.sm.encode(["Hi"]), _iv(torch.ones(64), 1e38), max_new_tokens=2))
register("silently wrong", "L2S g predicts NaN at generate time (weights broken in memory)",
         lambda ws: _generate(ws, _broken_l2s(ws, float("nan"))))
register("silently wrong", "L2S g output x alpha overflows float32",
         lambda ws: _generate(ws, _broken_l2s(ws, 1e30), alpha=1e10))
register("silently wrong", "save_pretrained of an L2S with NaN weights (a folder that cannot load)",
         lambda ws: _broken_l2s(ws, float("nan")).save_pretrained(ws.tmp / "x"))


def _gguf_alpha(ws: Workspace, alpha: float, vec: torch.Tensor) -> None:
    from ..export import export_gguf

    export_gguf({1: vec}, ws.tmp / "x.gguf", model_hint="llama", alpha=alpha)


register("silently wrong", "GGUF export with alpha = 1e39 (the file holds float32)",
         lambda ws: _gguf_alpha(ws, 1e39, torch.ones(64)))
register("silently wrong", "GGUF export where alpha x vector overflows float32",
         lambda ws: _gguf_alpha(ws, 100.0, torch.full((64,), 1e37)))


def _dup_loader(kind: str) -> Callable[[Workspace], Any]:
    def run(ws: Workspace) -> Any:
        from ..data import loaders as L

        d = ws.tmp
        if kind == "mmsb":
            (d / "processed_questions").mkdir()
            (d / "processed_questions" / "01-Illegal_Activitiy.json").write_text(
                '{"1": {"Rephrased Question": "a"}, "1": {"Rephrased Question": "b"}}')
            return L.load_mmsafetybench(d, scenarios=["01-Illegal_Activitiy"])
        if kind == "figstep":
            (d / "s.csv").write_text("dataset,category_id,task_id,category_name,question,instruction\n"
                                     "SafeBench,1,1,Illegal Activity,q,i\nSafeBench,1,1,Illegal Activity,q2,i2\n")
            return L.load_figstep(d)
        if kind == "benign":
            (d / "b.jsonl").write_text('{"id": "s1", "instruction": "a", "instances": []}\n'
                                       '{"id": "s1", "instruction": "b", "instances": []}\n')
            return L.load_benign_seed_tasks(d / "b.jsonl")
        if kind == "dna":
            (d / "n.jsonl").write_text('{"id": 3, "prompt": "a", "intents": ["S001"]}\n'
                                       '{"id": 3, "prompt": "b", "intents": ["S001"]}\n')
            return L.load_donotanswer(d / "n.jsonl")
        if kind == "harmbench":
            (d / "h.csv").write_text("Behavior,BehaviorID\nDo a,x\nDo b,x\n")
            return L.load_harmbench(d / "h.csv")
        if kind == "pope":
            (d / "q.json").write_text("".join(json.dumps({"question_id": 1, "image": f"{i}.png", "text": "Is there?",
                                                          "label": "yes"}) + "\n" for i in range(2)))
            return L.load_pope(d / "q.json", d)
        if kind == "jsonl-key":
            (d / "b.jsonl").write_text('{"id": "a", "id": "b", "instruction": "x", "instances": []}\n')
            return L.load_benign_seed_tasks(d / "b.jsonl")
        raise AssertionError(kind)
    return run


for _k, _d in [("mmsb", "MM-SafetyBench duplicate question id (a duplicate JSON key)"),
               ("figstep", "FigStep duplicate (dataset, category, task) row"),
               ("benign", "self-instruct seed tasks with a duplicate id"),
               ("dna", "Do-Not-Answer records with a duplicate id"),
               ("harmbench", "HarmBench CSV with a duplicate BehaviorID"),
               ("pope", "POPE duplicate question_id"),
               ("jsonl-key", "a JSON-lines record with the same key twice")]:
    register("silently wrong", _d, _dup_loader(_k))


# ---------------------------------------------------------------------- saved work lost ----
def _crash_overwrite(ws: Workspace) -> None:
    from .. import persistence

    target = ws.saved("mean")
    with _intact(target), mock.patch.object(persistence, "save_file",
                                            side_effect=OSError(errno.ENOSPC, "No space left on device")):
        ws.fitted("mean2").save_pretrained(target, overwrite=True)


def _crash_between_renames(ws: Workspace) -> None:
    """The fallback (no RENAME_EXCHANGE): a crash on the second rename puts the old folder back."""
    from .. import persistence

    target = ws.saved("mean")
    real = os.replace
    calls: list[int] = []

    def flaky(a: Any, b: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.EIO, "simulated crash")
        real(a, b)

    with _intact(target), mock.patch.object(persistence, "exchange", return_value=False), \
            mock.patch.object(persistence.os, "replace", flaky):
        ws.fitted("mean2").save_pretrained(target, overwrite=True)


def _kill_loop(ws: Workspace) -> None:
    """SIGKILL a saving process 8 times at random moments; the folder must load each time."""
    import random

    from ..steerers import Steerer

    target = ws.saved("mean")
    pair = (ws.fitted("mean"), ws.fitted("mean2"))
    rng = random.Random(1)
    for i in range(8):
        pid = os.fork()
        if pid == 0:
            try:
                k = i
                while True:
                    pair[k % 2].save_pretrained(target, overwrite=True)
                    k += 1
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        try:
            st = Steerer.from_pretrained(target)
        except Exception as e:
            raise DataLost(f"after kill {i} the folder does not load: {e}") from e
        if st.alpha not in (2.0, 3.0):
            raise DataLost(f"after kill {i} the folder holds alpha {st.alpha}")


def _concurrent(ws: Workspace) -> None:
    """Another process is saving (holds the lock): this save must refuse and leave the folder."""
    from .. import persistence

    target = ws.saved("mean")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # never return into the caller's code from a forked child
        try:
            with persistence.save_lock(target):
                os.write(w, b"x")
                time.sleep(5)
        finally:
            os._exit(0)
    os.read(r, 1)
    try:
        with _intact(target):
            ws.fitted("mean2").save_pretrained(target, overwrite=True)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)


def _no_overwrite(ws: Workspace) -> None:
    target = ws.saved("mean")
    with _intact(target):
        ws.fitted("mean2").save_pretrained(target)


def _onto_user_folder(ws: Workspace) -> None:
    d = ws.tmp / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    with _intact(d):
        ws.fitted("mean").save_pretrained(d)


def _onto_file(ws: Workspace) -> None:
    f = ws.tmp / "notes.txt"
    f.write_text("keep me")
    try:
        ws.fitted("mean").save_pretrained(f, overwrite=True)
    finally:
        if not f.is_file() or f.read_text() != "keep me":
            raise DataLost(f"{f} was replaced")


def _gguf_existing(ws: Workspace) -> None:
    from ..export import export_gguf

    f = ws.tmp / "x.gguf"
    f.write_bytes(b"someone's file")
    try:
        export_gguf({1: torch.ones(64)}, f, model_hint="llama")
    finally:
        if f.read_bytes() != b"someone's file":
            raise DataLost("the existing .gguf was overwritten")


def _text_atomic_crash(ws: Workspace) -> None:
    from .. import persistence

    f = ws.tmp / "run.json"
    f.write_text('{"v": 1}')
    try:
        with mock.patch.object(persistence.os, "replace", side_effect=OSError(errno.EIO, "crash")):
            persistence.write_text_atomic(f, '{"v": 2}')
    finally:
        if f.read_text() != '{"v": 1}':
            raise DataLost("the previous text was lost")


for _fn, _d in [(_crash_overwrite, "disk full while overwriting a saved steerer"),
                (_crash_between_renames, "crash between the two renames of the no-exchange fallback"),
                (_concurrent, "a second process saving to the same folder"),
                (_no_overwrite, "save onto an existing steerer without overwrite=True"),
                (_onto_user_folder, "save onto a user's folder that is not a steerer"),
                (_onto_file, "save with overwrite=True onto a regular file"),
                (_gguf_existing, "GGUF export onto an existing file without overwrite"),
                (_text_atomic_crash, "crash while replacing a text file (reports, run.json)")]:
    register("saved work lost", _d, _fn)
register("saved work lost", "SIGKILL of a process saving repeatedly, 8 random moments", _kill_loop, survives=True)


# ---------------------------------------------------------------------- read outside -------
def _pope_name(name_of: Callable[[Path], str], link: bool = False) -> Callable[[Workspace], Any]:
    def run(ws: Workspace) -> None:
        from ..data import loaders as L

        secret = ws.secret()
        img = ws.tmp / "images"
        img.mkdir()
        name = name_of(secret)
        if link:
            (img / name).symlink_to(secret)
        (ws.tmp / "q.json").write_text(json.dumps({"question_id": 1, "image": name, "text": "Is there a cat?",
                                                   "label": "yes"}) + "\n")
        _outside_check(L.load_pope(ws.tmp / "q.json", img), img)
    return run


register("read outside", "POPE image ../private/holiday.png", _pope_name(lambda s: "../private/holiday.png"))
register("read outside", "POPE image given as an absolute path", _pope_name(lambda s: str(s)))
register("read outside", "POPE image sub/../../private/holiday.png",
         _pope_name(lambda s: "sub/../../private/holiday.png"))
register("read outside", "POPE image that is a symlink out of the folder", _pope_name(lambda s: "x.png", link=True))


def _mmsb_escape(ws: Workspace) -> None:
    from ..data import loaders as L

    (ws.tmp / "processed_questions").mkdir()
    (ws.tmp / "processed_questions" / "01-Illegal_Activitiy.json").write_text(
        json.dumps({"../../../../private/holiday": {"Rephrased Question": "x"}}))
    _outside_check(L.load_mmsafetybench(ws.tmp, scenarios=["01-Illegal_Activitiy"]), ws.tmp / "imgs")


def _figstep_escape(ws: Workspace) -> None:
    from ..data import loaders as L

    (ws.tmp / "s.csv").write_text("dataset,category_id,task_id,category_name,question,instruction\n"
                                  "a/../../../private/holiday,1,1,Illegal Activity,q,i\n")
    _outside_check(L.load_figstep(ws.tmp), ws.tmp / "images")


def _yolo_link(ws: Workspace) -> None:
    from ..data import loaders as L

    secret = ws.secret()
    r = ws.tmp / "y"
    (r / "images").mkdir(parents=True)
    (r / "labels").mkdir()
    (r / "classes.txt").write_text("cat\n")
    (r / "images" / "a.jpg").symlink_to(secret)
    (r / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    _outside_check(L.build_pope_from_yolo(r, "random"), r / "images")


def _text_safety_link(ws: Workspace) -> None:
    from ..data import loaders as L

    r = ws.tmp / "ts"
    r.mkdir()
    out = ws.tmp / "private.txt"
    out.write_text("A private line\n")
    (r / "harmbench_standard.txt").symlink_to(out)
    items = L.text_safety_items(r, harmful_sources=["harmbench"], advice_sources=[], benign=False)
    raise ReadOutside(f"read {len(items)} lines through a symlink out of {r}")


def _text_safety_source(ws: Workspace) -> None:
    from ..data import loaders as L

    r = ws.tmp / "ts"
    (r / "donotanswer").mkdir(parents=True)
    (ws.tmp / "x.jsonl").write_text(json.dumps({"prompt": "private", "intents": ["S001"]}) + "\n")
    items = L.text_safety_items(r, harmful_sources=["../../x"], advice_sources=[], benign=False)
    raise ReadOutside(f"read {len(items)} records from outside {r}")


def _dna_link(ws: Workspace) -> None:
    from ..data import loaders as L

    d = ws.tmp / "dna"
    d.mkdir()
    (ws.tmp / "x.jsonl").write_text(json.dumps({"prompt": "private", "intents": ["S001"]}) + "\n")
    (d / "a.jsonl").symlink_to(ws.tmp / "x.jsonl")
    items = L.load_donotanswer(d)
    raise ReadOutside(f"read {len(items)} records through a symlink out of {d}")


def _steerer_link(name: str) -> Callable[[Workspace], Any]:
    def run(ws: Workspace) -> None:
        p = ws.saved("mean")
        out = ws.tmp / f"elsewhere-{name}"
        shutil.move(p / name, out)
        (p / name).symlink_to(out)
        ws.load(p)
        raise ReadOutside(f"followed {name} -> {out}")
    return run


def _steerer_link_dev(ws: Workspace) -> None:
    p = ws.saved("mean")
    (p / "steerer.safetensors").unlink()
    (p / "steerer.safetensors").symlink_to("/dev/zero")
    ws.load(p)
    raise ReadOutside("read /dev/zero")


for _fn, _d in [(_mmsb_escape, "MM-SafetyBench question id ../../../../private/holiday"),
                (_figstep_escape, "FigStep dataset field a/../../../private/holiday"),
                (_yolo_link, "YOLO image folder entry linking outside"),
                (_text_safety_link, "text-safety root file linking outside"),
                (_text_safety_source, "text-safety source name ../../x"),
                (_dna_link, "Do-Not-Answer folder member linking outside"),
                (_steerer_link("steerer.safetensors"), "saved steerer tensor file linking outside its folder"),
                (_steerer_link("steerer.json"), "saved steerer metadata linking outside its folder"),
                (_steerer_link_dev, "saved steerer tensor file linking to /dev/zero")]:
    register("read outside", _d, _fn)


# ---------------------------------------------------------------------- memory ----------
def _sparse_tensors(ws: Workspace) -> None:
    from .. import persistence

    p = ws.saved("mean")
    n = 2**29
    _header_file(p / "steerer.safetensors", {"vector_": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}},
                 4 * n)
    read: list[int] = []
    real = persistence._read_exact
    with mock.patch.object(persistence, "_read_exact", lambda fd, k, *a: read.append(k) or real(fd, k, *a)):
        try:
            ws.load(p)
        finally:
            if sum(read) > 1 << 20:
                raise ReadBeforeCheck(f"read {sum(read)} bytes before refusing")


def _sparse_padded(ws: Workspace) -> None:
    p = ws.saved("mean")
    _header_file(p / "steerer.safetensors", {"vector_": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}},
                 2**31)
    ws.load(p)


def _big_json(ws: Workspace) -> None:
    p = ws.saved("mean")
    with open(p / "steerer.json", "r+b") as f:
        f.truncate(2**30)
    ws.load(p)


def _header_len(ws: Workspace) -> None:
    p = ws.saved("mean")
    (p / "steerer.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    ws.load(p)


def _header_beyond(ws: Workspace) -> None:
    p = ws.saved("mean")
    _header_file(p / "steerer.safetensors", {"vector_": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}, 8)
    ws.load(p)


for _fn, _d in [(_sparse_tensors, "a 2 GiB sparse steerer.safetensors with a valid header"),
                (_sparse_padded, "a right header padded to 2 GiB"),
                (_big_json, "a 1 GiB sparse steerer.json"),
                (_header_len, "a safetensors header length of 2**62"),
                (_header_beyond, "a header claiming data beyond the file")]:
    register("memory before check", _d, _fn)


# ---------------------------------------------------------------------- tracebacks ------
def _fifo(name: str) -> Callable[[Workspace], Any]:
    def run(ws: Workspace) -> None:
        p = ws.saved("mean")
        (p / name).unlink()
        os.mkfifo(p / name)
        ws.load(p)
    return run


def _fifo_loader(which: str) -> Callable[[Workspace], Any]:
    def run(ws: Workspace) -> Any:
        from ..data import items_from_file
        from ..data import loaders as L

        f = ws.tmp / ("data.csv" if which == "figstep" else "data.jsonl")
        os.mkfifo(f)
        return {"pope": lambda: L.load_pope(f, ws.tmp), "harmbench": lambda: L.load_harmbench(f),
                "benign": lambda: L.load_benign_seed_tasks(f), "dna": lambda: L.load_donotanswer(f),
                "figstep": lambda: L.load_figstep(ws.tmp, csv_file=f), "records": lambda: items_from_file(f)}[which]()
    return run


def _shape(tensors: dict[str, torch.Tensor], which: str = "mean") -> Callable[[Workspace], Any]:
    return lambda ws: ws.load(_tensor_ret(ws.saved(which), tensors))


def _save_errno(code: int) -> Callable[[Workspace], Any]:
    def run(ws: Workspace) -> None:
        from .. import persistence

        with mock.patch.object(persistence, "save_file", side_effect=OSError(code, os.strerror(code))):
            ws.fitted("mean").save_pretrained(ws.tmp / "x")
    return run


def _save_path(kind: str) -> Callable[[Workspace], Any]:
    def run(ws: Workspace) -> None:
        if kind == "dangling":
            (ws.tmp / "l").symlink_to(ws.tmp / "nowhere")
            ws.fitted("mean").save_pretrained(ws.tmp / "l" / "x")
        elif kind == "dangling-target":
            (ws.tmp / "l").symlink_to(ws.tmp / "nowhere")
            ws.fitted("mean").save_pretrained(ws.tmp / "l")
        elif kind == "nul":
            ws.fitted("mean").save_pretrained(str(ws.tmp / "a\x00b"))
        elif kind == "file-parent":
            (ws.tmp / "f").write_text("x")
            ws.fitted("mean").save_pretrained(ws.tmp / "f" / "x")
        elif kind == "gguf-dangling":
            from ..export import export_gguf

            (ws.tmp / "l").symlink_to(ws.tmp / "nowhere")
            export_gguf({1: torch.ones(64)}, ws.tmp / "l" / "x.gguf", model_hint="llama")
        elif kind == "gguf-nul":
            from ..export import export_gguf

            export_gguf({1: torch.ones(64)}, str(ws.tmp / "x\x00.gguf"), model_hint="llama")
        elif kind == "gguf-enospc":
            from ..export import export_gguf

            with mock.patch("os.replace", side_effect=OSError(errno.ENOSPC, "No space left on device")):
                export_gguf({1: torch.ones(64)}, ws.tmp / "x.gguf", model_hint="llama")
        elif kind == "text-nul":
            from ..persistence import write_text_atomic

            write_text_atomic(str(ws.tmp / "r\x00.md"), "x")
        elif kind == "text-erofs":
            from .. import persistence

            with mock.patch.object(persistence.tempfile, "mkstemp", side_effect=OSError(errno.EROFS, "Read-only")):
                persistence.write_text_atomic(ws.tmp / "report.md", "x")
        elif kind == "load-nul":
            ws.load(Path(str(ws.tmp / "a\x00b")))
        else:
            raise AssertionError(kind)
    return run


def _l2s_param(**kw: Any) -> Callable[[Workspace], Any]:
    from ..steerers import L2S

    return lambda ws: L2S(1, **{"progress": False, **kw}).fit(ws.sm, ws.items())


def _p2s_param(**kw: Any) -> Callable[[Workspace], Any]:
    from ..steerers import MeanSteer

    return lambda ws: MeanSteer(1, **{"progress": False, **kw}).fit(ws.sm, ws.items())


_TRACEBACK_CASES: list[tuple[str, Callable[[Workspace], Any]]] = [
    ("FIFO in place of steerer.json", _fifo("steerer.json")),
    ("FIFO in place of steerer.safetensors", _fifo("steerer.safetensors")),
    *[(f"FIFO given to the {w} loader", _fifo_loader(w))
      for w in ("pope", "harmbench", "benign", "dna", "figstep", "records")],
    ("Mean-S vector saved 2-D [1, 64]", _shape({"vector_": torch.ones(1, 64)})),
    ("Mean-S vector saved 0-d", _shape({"vector_": torch.tensor(1.0)})),
    ("Mean-S vector of another width [32]", _shape({"vector_": torch.ones(32)})),
    ("Mean-S vector saved as int32", _shape({"vector_": torch.ones(64, dtype=torch.int32)})),
    ("Mean-S file with an extra tensor", _shape({"vector_": torch.ones(64), "x": torch.ones(1)})),
    ("L2S of another width (d_model 32)", _shape({"encoder_weight_": torch.zeros(8, 32), "encoder_bias_": torch.zeros(8),
                                                  "decoder_weight_": torch.zeros(32, 8)}, "l2s")),
    ("L2S whose K differs from its saved hidden", _shape({"encoder_weight_": torch.zeros(5, 64),
                                                          "encoder_bias_": torch.zeros(5),
                                                          "decoder_weight_": torch.zeros(64, 5)}, "l2s")),
    ("saved L2S with hidden = -1", lambda ws: ws.load(_edit_ret(ws.saved("l2s"),
                                                                 lambda m: m["params"].__setitem__("hidden", -1)))),
    ("saved steerer with hidden_size '64' (a string)",
     lambda ws: ws.load(_edit_ret(ws.saved("mean"), lambda m: m["model"].__setitem__("hidden_size", "64")))),
    ("saved steerer with layer 7 of a 3-layer model",
     lambda ws: ws.load(_edit_ret(ws.saved("mean"), lambda m: m["params"].__setitem__("layer", 7)))),
    ("truncated steerer.safetensors", lambda ws: ws.load(_truncate_ret(ws.saved("mean"), 40))),
    ("empty steerer.json", lambda ws: ws.load(_raw_ret(ws.saved("mean"), "steerer.json", b""))),
    ("steerer.json that is a folder", lambda ws: ws.load(_dir_ret(ws.saved("mean"), "steerer.json"))),
    *[(f"save_pretrained on a disk failing with {errno.errorcode[c]}", _save_errno(c))
      for c in (errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EDQUOT, errno.ENAMETOOLONG, errno.EIO)],
    ("save_pretrained under a dangling symlink", _save_path("dangling")),
    ("save_pretrained to a dangling symlink", _save_path("dangling-target")),
    ("save_pretrained to a path with a NUL byte", _save_path("nul")),
    ("save_pretrained under a regular file", _save_path("file-parent")),
    ("GGUF export under a dangling symlink", _save_path("gguf-dangling")),
    ("GGUF export to a path with a NUL byte", _save_path("gguf-nul")),
    ("GGUF export on a full disk", _save_path("gguf-enospc")),
    ("report/run.json text write to a path with a NUL byte", _save_path("text-nul")),
    ("report/run.json text write on a read-only disk", _save_path("text-erofs")),
    ("from_pretrained of a path with a NUL byte", _save_path("load-nul")),
    *[(f"L2S({k}={v!r})", _l2s_param(**{k: v})) for k, v in [
        ("hidden", -1), ("hidden", 0), ("lr", math.nan), ("lr", -1.0), ("epochs", 0), ("train_batch_size", 0),
        ("l1_weight", -1.0), ("cos_weight", math.inf), ("val_fraction", 1.0), ("gate", 2.0), ("gate_folds", 1),
        ("class_balance", "yes"), ("init", "zeros"), ("scheduler", "step"), ("warmup_epochs", -1)]],
    *[(f"MeanSteer({k}={v!r})", _p2s_param(**{k: v})) for k, v in [
        ("continuation_tokens", -1), ("batch_size", 0), ("seed", -1), ("alpha", math.inf), ("reduction", "median"),
        ("progress", "no")]],
    ("generate with a None prompt", lambda ws: ws.fitted("mean").generate(ws.sm, [None], progress=False)),
    ("generate with an int prompt", lambda ws: ws.fitted("mean").generate(ws.sm, 42, progress=False)),
    ("generate with bytes", lambda ws: ws.fitted("mean").generate(ws.sm, b"hi", progress=False)),
]
for _d, _fn in _TRACEBACK_CASES:
    register("traceback for a user mistake", _d, _fn)


# ---------------------------------------------------------------------- small helpers ----
def _edit_ret(p: Path, fn: Callable[[dict[str, Any]], None]) -> Path:
    _meta_edit(p, fn)
    return p


def _text_ret(p: Path, old: str, new: str) -> Path:
    text = (p / "steerer.json").read_text()
    if old not in text:
        raise AssertionError(f"{old!r} not in steerer.json")  # a broken case shows as a traceback
    (p / "steerer.json").write_text(text.replace(old, new, 1))
    return p


def _tensor_ret(p: Path, tensors: dict[str, torch.Tensor]) -> Path:
    _set_tensors(p, tensors)
    return p


def _truncate_ret(p: Path, n: int) -> Path:
    f = p / "steerer.safetensors"
    f.write_bytes(f.read_bytes()[:n])
    return p


def _raw_ret(p: Path, name: str, data: bytes) -> Path:
    (p / name).write_bytes(data)
    return p


def _dir_ret(p: Path, name: str) -> Path:
    (p / name).unlink()
    (p / name).mkdir()
    return p


def _iv(v: torch.Tensor, alpha: float) -> Any:
    from ..intervention import Intervention

    return Intervention.build(1, v, alpha=alpha)


def _broken_l2s(ws: Workspace, value: float) -> Any:
    from ..steerers import L2S

    st = L2S(1, input_layer=2 if value == 1e30 else None, hidden=4, epochs=2, progress=False).fit(ws.sm, ws.items())
    with torch.no_grad():
        st.net_.decoder.weight.fill_(value)
    return st
