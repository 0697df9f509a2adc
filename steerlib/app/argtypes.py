"""Argument types of every ``steerlib`` subcommand: each number, list and name is checked while the
command line is parsed, so a mistake is one ``error: argument --flag: ...`` line (exit 2) before
anything is loaded.

Nothing here imports torch, nnsight or transformers: ``steerlib --help`` stays fast. Names that
only the method registry knows (:func:`one_of`) are asked for when a value is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ..defaults import DEFAULT_MAX_NEW_TOKENS
from ..errors import SteerlibError

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DEVICE", "blame", "comma_list", "device", "finite_float",
           "int_list", "nonnegative_int", "one_of", "positive_float", "positive_int", "probability",
           "unit_fraction_list"]

T = TypeVar("T")


#: What ``--device`` accepts: a torch device type with an optional index (checked against the machine at load).
DEVICE = re.compile(r"(cpu|meta|mps|cuda|xpu|npu|hpu)(:\d+)?")


def _int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def positive_int(text: str) -> int:
    """A whole number >= 1 (a count, a size, a length)."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def nonnegative_int(text: str) -> int:
    """A whole number >= 0 (a layer index, a seed)."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def finite_float(text: str) -> float:
    """A finite number (no nan, no inf), e.g. a strength alpha."""
    return _float(text)


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate, a temperature, a scale)."""
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {v:g}")
    return v


def probability(text: str) -> float:
    """A finite number in [0, 1]."""
    v = _float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {v:g}")
    return v


def comma_list(item: Callable[[str], T], what: str = "value") -> Callable[[str], list[T]]:
    """A type for a comma list whose every part is checked by ``item`` (e.g. ``--layers 12,15``)."""

    def parse(text: str) -> list[T]:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"empty; give a comma list of {what}s, e.g. 1,2")
        out = []
        for p in parts:
            try:
                out.append(item(p))
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(f"{p!r} in {text!r}: {e}" if len(parts) > 1 else str(e)) from None
        return out

    parse.__name__ = f"comma list of {what}s"  # argparse names the type in its own messages
    return parse


int_list = comma_list(nonnegative_int, "layer")


def unit_fraction_list(text: str) -> list[float]:
    """A comma list of fractions in (0, 1] that sum to at most 1 (``--split 0.7,0.3``)."""
    parts = comma_list(probability, "fraction")(text)
    if any(p <= 0 for p in parts) or sum(parts) > 1 + 1e-9:
        raise argparse.ArgumentTypeError(f"{text!r}: fractions must be > 0 and sum to at most 1")
    return parts


def device(text: str) -> str:
    """A torch device spelling (``cpu``, ``cuda``, ``cuda:1``, ``mps``); whether the machine has it is
    checked when the model is loaded."""
    if not DEVICE.fullmatch(str(text).strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:<index> or mps")
    return str(text).strip()


def one_of(load: Callable[[], Iterable[str]], what: str) -> Callable[[str], str]:
    """A type accepting a name of ``load()``, asked only when a value is checked (never for ``--help``:
    the method registry imports torch). Unlike ``choices=``, help and usage do not list the names."""

    def check(text: str) -> str:
        names = list(load())
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; use one of {', '.join(names)}")
        return text

    check.__name__ = what
    return check


@contextlib.contextmanager
def blame(flag: str, value: Any) -> Iterator[None]:
    """Name the flag in a :class:`~steerlib.errors.SteerlibError` raised by what it configured (the model
    ``--model`` names, the judge ``--judge`` names, ...), unless the message names it already."""
    try:
        yield
    except SteerlibError as e:
        if str(e).startswith("--") or f"{flag} " in str(e):  # it names a flag already
            raise
        raise SteerlibError(f"{flag} {value}: {e}") from e
