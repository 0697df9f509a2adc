"""``steerlib chat``: try a saved steerer interactively on one loaded model.

The model is loaded once; the steerer is attached to it (:meth:`steerlib.steerers.Steerer.attach`),
so each answer is the plain ``model.generate`` of the steered model, streamed as it is produced.
Each message is one single-turn prompt (no conversation history), rendered with the chat template.

Commands: ``/alpha A`` (strength), ``/steer on|off``, ``/compare on|off`` (also print the
unsteered answer), ``/positions P``, ``/max N`` (new tokens), ``/help``, ``/quit`` (or Ctrl-D).

Nothing heavy is imported at module level, so building the CLI parser stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, TextIO

__all__ = ["COMMANDS", "ChatSession", "add_arguments", "run_from_args"]

COMMANDS = """commands:
  /alpha A          set the steering strength (e.g. /alpha 0.5)
  /steer on|off     steer the answers, or not
  /compare on|off   also print the unsteered answer
  /positions P      where to steer: all, prompt, generated, last_prompt, image, text
  /max N            generate at most N new tokens
  /help             this list
  /quit             leave (or Ctrl-D)
Anything else is sent to the model as one single-turn prompt (no history)."""

_POSITIONS = ("all", "prompt", "generated", "last_prompt", "image", "text")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``chat`` subcommand's flags (argparse only: no torch import here)."""
    p.add_argument("--model", default="smollm2", help="smollm2, gemma3-270m, tiny:<family>, a local HF folder or a "
                                                      "Hub repo id: the model the steerer was fitted on")
    p.add_argument("--revision", default=None, help="Hub revision of a --model repo id (branch, tag or commit)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="weights dtype")
    p.add_argument("--system", default=None, help="a system message for every prompt (chat template)")
    p.add_argument("--steerer", required=True, help="folder written by save_pretrained / steerlib fit, or a Hub repo id")
    p.add_argument("--steerer-revision", default=None, help="Hub revision of a --steerer repo id")
    p.add_argument("--alpha", type=float, default=None, help="strength (default: the one saved with the steerer)")
    p.add_argument("--positions", default=None, choices=_POSITIONS, help="where to steer (default: the steerer's)")
    p.add_argument("--compare", action="store_true", help="also print the unsteered answer to every prompt")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens to generate per answer")
    p.add_argument("--no-stream", action="store_true", help="print each answer when it is complete")


class ChatSession:
    """The loop's state: one model, one attached steerer, the current settings.

    Args:
        model: the :class:`~steerlib.engine.SteerableModel` (loaded once).
        steerer: a fitted steerer; it is attached to ``model`` for the session's lifetime.
        alpha: the strength (None: the steerer's).
        positions: where to steer (None: the steerer's).
        compare: print the unsteered answer after the steered one.
        max_new_tokens: per answer.
        stream: print tokens as they come (a ``TextStreamer``).
        out: where to print.
    """

    def __init__(self, model: Any, steerer: Any, *, alpha: float | None = None, positions: str | None = None,
                 compare: bool = False, max_new_tokens: int = 48, stream: bool = True,
                 out: TextIO | None = None) -> None:
        self.model = model
        self.steerer = steerer
        self.compare = compare
        self.steer = True
        self.max_new_tokens = max_new_tokens
        self.stream = stream
        self.out = out or sys.stdout
        self.handle = steerer.attach(model, alpha=alpha, positions=positions)

    @property
    def alpha(self) -> float:
        return float(self.steerer.alpha if self.handle.alpha is None else self.handle.alpha)

    @property
    def positions(self) -> str:
        return str(self.steerer.positions if self.handle.positions is None else self.handle.positions)

    def close(self) -> None:
        """Detach the steerer (the model is as it was)."""
        self.handle.remove()

    def _print(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=self.out, flush=True)

    def banner(self) -> str:
        s = self.steerer
        return (f"steerlib chat: {self.model.name} with a {s.method} steerer (layer {s.layer}, alpha {self.alpha}, "
                f"positions {self.positions}). /help lists the commands, /quit leaves.")

    def settings(self) -> str:
        return (f"steer {'on' if self.steer else 'off'}, alpha {self.alpha}, positions {self.positions}, "
                f"compare {'on' if self.compare else 'off'}, max {self.max_new_tokens} new tokens")

    # ------------------------------------------------------------------ answers ---
    def answer(self, prompt: str, *, steered: bool) -> str:
        """Generate one answer with the attached steerer on or off; print it (streamed) and return it."""
        import torch

        sm = self.model
        label = f"[{self.steerer.method} alpha={self.alpha:g}]" if steered else "[unsteered]"
        self.handle.enabled = steered
        batch = sm.encode([prompt])
        tok = sm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kw: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        self._print(label + " ", end="")
        if self.stream:
            kw["streamer"] = _streamer(tok, self.out)
        inputs = {k: v.to(sm.device) for k, v in batch.inputs.items()}
        with torch.no_grad():
            seqs = sm.model.generate(**inputs, **kw)
        text = tok.decode(seqs[0, batch.seq_len:], skip_special_tokens=True)
        if not self.stream:
            self._print(text)
        self._print()
        return str(text)

    def ask(self, prompt: str) -> None:
        self.answer(prompt, steered=self.steer)
        if self.compare and self.steer:
            self.answer(prompt, steered=False)

    # ------------------------------------------------------------------ commands --
    def command(self, line: str) -> bool:
        """Run one ``/command``; False when the session should end."""
        from ..errors import SteerlibError

        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name in ("help", "h", "?"):
            self._print(COMMANDS)
        elif name == "alpha":
            try:
                value = float(arg)
            except ValueError:
                self._print(f"/alpha needs a number, e.g. /alpha 0.5 (got {arg!r})")
                return True
            from ..intervention import check_finite

            try:
                check_finite(value, "alpha")
            except SteerlibError as e:
                self._print(f"error: {e}")
                return True
            self.handle.alpha = value
            self._print(self.settings())
        elif name in ("steer", "compare"):
            if arg not in ("on", "off"):
                self._print(f"/{name} takes on or off")
                return True
            setattr(self, name, arg == "on")
            self._print(self.settings())
        elif name == "positions":
            if arg not in _POSITIONS:
                self._print(f"/positions takes one of {', '.join(_POSITIONS)}")
                return True
            self.handle.positions = arg
            self._print(self.settings())
        elif name == "max":
            if not arg.isdigit() or int(arg) < 1:
                self._print("/max takes a positive whole number, e.g. /max 64")
                return True
            self.max_new_tokens = int(arg)
            self._print(self.settings())
        else:
            self._print(f"unknown command /{name}; /help lists the commands")
        return True

    def run(self, read: Callable[[str], str] = input) -> int:
        """The loop: read a line, run a command or answer it, until /quit or end of input."""
        from ..errors import SteerlibError

        self._print(self.banner())
        try:
            while True:
                try:
                    line = read("you> ").strip()
                except (EOFError, KeyboardInterrupt):
                    self._print()
                    return 0
                if not line:
                    continue
                if line.startswith("/"):
                    if not self.command(line):
                        return 0
                    continue
                try:
                    self.ask(line)
                except SteerlibError as e:
                    self._print(f"\nerror: {e}")
        finally:
            self.close()


def _streamer(tok: Any, out: TextIO) -> Any:
    """A ``TextStreamer`` printing to ``out`` (the prompt skipped, special tokens dropped)."""
    from transformers import TextStreamer

    class _To(TextStreamer):  # type: ignore[misc]
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            print(text, flush=True, end="", file=out)

    return _To(tok, skip_prompt=True, skip_special_tokens=True)


def run_from_args(args: argparse.Namespace) -> int:
    """``steerlib chat``: load the model and the steerer once, then loop."""
    from pathlib import Path

    from ..errors import SteerlibError
    from ..steerers import Steerer
    from ..steerers.base import resolve_steerer_path
    from ..zoo import load_steerable

    if args.max_new_tokens < 1:
        raise SteerlibError("--max-new-tokens must be at least 1.")
    path = resolve_steerer_path(args.steerer, args.steerer_revision)  # before the model: a bad path fails fast
    if not Path(path).is_dir():
        raise SteerlibError(f"--steerer {args.steerer}: no saved steerer there (a folder written by steerlib fit "
                            "or save_pretrained, or a Hub repo id).")
    model = load_steerable(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    if args.system is not None:
        model.system_prompt = args.system
    steerer = Steerer.from_pretrained(path, model=model)
    session = ChatSession(model, steerer, alpha=args.alpha, positions=args.positions, compare=args.compare,
                          max_new_tokens=args.max_new_tokens, stream=not args.no_stream)
    return session.run()
