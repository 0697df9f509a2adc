"""Checks of steerers' hyperparameters: one message shape for every method, naming the parameter.

Each check reads ``getattr(steerer, name)`` and raises :class:`~steerlib.errors.ParameterError`
(a ``DataError``) saying which parameter of which method is wrong, what it holds and what it
may hold. Steerers call them from ``_check_settings`` (run by ``fit`` and on load).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from ..errors import ParameterError

__all__ = ["check_bool", "check_choice", "check_int", "check_real", "check_optional_str"]


def _fail(obj: Any, name: str, want: str, value: Any) -> ParameterError:
    return ParameterError(f"{type(obj).__name__}: {name} must be {want}, got {value!r}; pass {name}= a valid value.")


def check_int(obj: Any, name: str, *, minimum: int | None = None, optional: bool = False) -> None:
    """``name`` is an int (not a bool) ``>= minimum`` (or None when ``optional``)."""
    v = getattr(obj, name)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (minimum is not None and v < minimum):
        want = {1: "a positive int (an integer >= 1)", 0: "a non-negative int (an integer >= 0)"}.get(
            minimum, "an integer" + (f" >= {minimum}" if minimum is not None else ""))  # type: ignore[arg-type]
        want += " or None" if optional else ""
        raise _fail(obj, name, want, v)


def check_real(obj: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
               open_min: bool = False, open_max: bool = False) -> None:
    """``name`` is a finite real number (not a bool or a string) in the given range."""
    v = getattr(obj, name)
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
    if ok and minimum is not None:
        ok = v > minimum if open_min else v >= minimum
    if ok and maximum is not None:
        ok = v < maximum if open_max else v <= maximum
    if not ok:
        lo = "" if minimum is None else f"{'>' if open_min else '>='} {minimum}"
        hi = "" if maximum is None else f"{'<' if open_max else '<='} {maximum}"
        rng = " and ".join(x for x in (lo, hi) if x)
        raise _fail(obj, name, "a finite number" + (f" {rng}" if rng else ""), v)


def check_bool(obj: Any, name: str) -> None:
    """``name`` is True or False."""
    v = getattr(obj, name)
    if not isinstance(v, bool):
        raise _fail(obj, name, "True or False", v)


def check_choice(obj: Any, name: str, choices: Sequence[Any]) -> None:
    """``name`` is one of ``choices`` (a Literal's values)."""
    v = getattr(obj, name)
    if isinstance(v, bool) or not any(v == c and type(v) is type(c) for c in choices):
        raise _fail(obj, name, "one of " + ", ".join(repr(c) for c in choices), v)


def check_optional_str(obj: Any, name: str) -> None:
    """``name`` is None or a non-empty string."""
    v = getattr(obj, name)
    if v is not None and (not isinstance(v, str) or not v):
        raise _fail(obj, name, "None or a non-empty string", v)
