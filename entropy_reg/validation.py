"""Argument checks shared by every constructor: one set of ``check_*`` validators for the whole package.

Each check returns the value in its canonical type or raises ``ValueError`` (or the ``error`` class
given) as ``"<owner>: <name> must be ..., got <value>"``, so every class words a bad argument the same
way. A leaf module: it imports nothing from ``entropy_reg``, and anything may import it.
"""

from __future__ import annotations

import math
import operator
from typing import Any


def as_integer(value: Any) -> int | None:
    """``value`` as an int when it is one (an int, numpy/torch integer or a float like ``2.0``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_nonnegative(owner: str, name: str, value: Any) -> float:
    """``value`` as a float; ``ValueError`` unless it is a finite number >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
    return number


def check_unit(owner: str, name: str, value: Any, bound: str = "must be in [0, 1]") -> float:
    """``value`` as a float; ``ValueError`` unless it is a number in [0, 1] (``bound`` words the upper limit)."""
    number = check_nonnegative(owner, name, value)
    if number > 1:
        raise ValueError(f"{owner}: {name} {bound}, got {value!r}")
    return number


def check_open_unit(owner: str, name: str, value: Any) -> float:
    """``value`` as a float; ``ValueError`` unless it is in (0, 1)."""
    try:
        ok = 0 < float(value) < 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{owner}: {name} must be in (0, 1), got {value!r}")
    return float(value)


def check_int(
    owner: str,
    name: str,
    value: Any,
    minimum: int,
    allow_none: bool = False,
    alternative: str = "",
    error: type[Exception] = ValueError,
) -> int | None:
    """``value`` as an int; ``error`` unless it is an integer >= ``minimum`` (or None when ``allow_none``).

    ``alternative`` words another accepted value in the message (e.g. ``"or None for all rows"``).
    """
    if value is None and allow_none:
        return None
    number = as_integer(value)
    if number is None or number < minimum:
        alternative = alternative or ("or None" if allow_none else "")
        raise error(f"{owner}: {name} must be an integer >= {minimum}{' ' + alternative if alternative else ''}, "
                    f"got {value!r}")
    return number


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value``; ``ValueError`` unless it is a bool (1 and "true" are not)."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be a bool, got {value!r}")
    return value


def check_choice(owner: str, name: str, value: Any, choices: tuple) -> Any:
    """``value``; ``ValueError`` unless it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {choices}, got {value!r}")
    return value
