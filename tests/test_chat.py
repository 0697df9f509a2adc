"""``steerlib chat`` driven through a pseudo-terminal (stdlib ``pty``), on a tiny model with a saved
tiny steerer: the steered and unsteered answers equal ``steerer.generate`` / the unsteered model, and
the commands change alpha, comparison and steering."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from steerlib import ContrastiveItem
from steerlib.steerers import MeanSteer, NoSteer
from steerlib.zoo import load_steerable

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
pty = pytest.importorskip("pty")

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "What colour is the thing in this image, and why is it there?"
NEW = 6


class Terminal:
    """A child process on a pseudo-terminal: write lines, read until a marker appears."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
               "TERM": "dumb", "TQDM_DISABLE": "1"}
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
                                     close_fds=True)
        os.close(slave)
        self.seen = ""
        self.pos = 0

    def expect(self, marker: str, timeout: float = 180.0) -> str:
        """What was printed after the previous marker up to and including ``marker`` (CRLF -> LF)."""
        end = time.monotonic() + timeout
        while marker not in self.seen[self.pos:]:
            left = end - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not select.select([self.master], [], [], 0)[0]):
                raise AssertionError(f"{marker!r} not printed; output so far:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                self.seen += chunk.decode("utf-8", errors="replace").replace("\r\n", "\n")
        cut = self.seen.index(marker, self.pos) + len(marker)
        got, self.pos = self.seen[self.pos:cut], cut
        return got

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


def test_chat_session_through_a_pty(tmp_path):
    sm = load_steerable("tiny:llama")
    beh = ["harmful", "benign"]
    items = [ContrastiveItem(prompt=f"Question number {i} about the {'cat' if i % 2 else 'weather'} today",
                             positive="I cannot help with that." if i % 2 else "Sure.",
                             negative="Sure, here is how." if i % 2 else "Sure.", behavior=beh[i % 2])
             for i in range(6)]
    st = MeanSteer(1, progress=False).fit(sm, items)
    st.save_pretrained(tmp_path / "steerer")
    steered8 = st.generate(sm, [PROMPT], alpha=8.0, max_new_tokens=NEW, progress=False)[0].strip()
    steered2 = st.generate(sm, [PROMPT], alpha=2.0, max_new_tokens=NEW, progress=False)[0].strip()
    plain = NoSteer().fit(sm, []).generate(sm, [PROMPT], max_new_tokens=NEW, progress=False)[0].strip()
    assert len({steered8, steered2, plain}) == 3, (steered8, steered2, plain)  # the checks below can tell them apart

    term = Terminal([sys.executable, "-m", "steerlib.app.cli", "chat", "--model", "tiny:llama", "--steerer",
                     str(tmp_path / "steerer"), "--alpha", "8", "--compare", "--max-new-tokens", str(NEW)])
    try:
        banner = term.expect("you> ")
        assert "mean steerer (layer 1, alpha 8.0" in banner

        term.send(PROMPT)
        out = term.expect("you> ")
        s, u = out.index("[mean alpha=8]"), out.index("[unsteered]")
        assert s < u
        assert out[s:u].split("]", 1)[1].strip() == steered8
        assert out[u:].split("]", 1)[1].replace("you> ", "").strip() == plain

        term.send("/alpha 2")
        assert "alpha 2.0" in term.expect("you> ")
        term.send("/compare off")
        assert "compare off" in term.expect("you> ")
        term.send(PROMPT)
        out = term.expect("you> ")
        assert "[unsteered]" not in out
        assert out.split("[mean alpha=2]", 1)[1].replace("you> ", "").strip() == steered2

        term.send("/steer off")
        assert "steer off" in term.expect("you> ")
        term.send(PROMPT)
        out = term.expect("you> ")
        assert "[mean" not in out
        assert out.split("[unsteered]", 1)[1].replace("you> ", "").strip() == plain

        term.send("/alpha lots")
        assert "/alpha needs a number" in term.expect("you> ")
        term.send("/bogus")
        assert "unknown command /bogus" in term.expect("you> ")
        term.send("/help")
        assert "/compare on|off" in term.expect("you> ")
        term.send("/quit")
    finally:
        rc = term.close()
    assert rc == 0, term.seen


def test_chat_refuses_a_missing_steerer(tmp_path):
    from steerlib.app.cli import main

    assert main(["chat", "--model", "tiny:llama", "--steerer", str(tmp_path / "nothing")]) == 2
