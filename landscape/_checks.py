"""Validation of user options, shared by the estimators: every bad value raises a
`LandscapeError` that names the option, what it must be and what was given."""

from __future__ import annotations

import math
from typing import Any

from .errors import LandscapeError


def check_option(name: str, value: Any, allowed: tuple) -> None:
    """Raise unless `value` is one of `allowed`."""
    if value not in allowed:
        raise LandscapeError(f"{name} must be one of {allowed}; got {value!r}.")


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raise unless `value` is an int (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LandscapeError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def is_positive(value: Any) -> bool:
    """A real number (not a bool or a string) that is finite and > 0."""
    if isinstance(value, (bool, str)):
        return False
    try:
        x = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a multi-element tensor
        return False
    return math.isfinite(x) and x > 0


def check_positive(name: str, value: Any, *, upper: float | None = None) -> None:
    """Raise unless `value` is a finite number > 0 (and < `upper` when given)."""
    if not (is_positive(value) and (upper is None or float(value) < upper)):
        allowed = f"in (0, {upper})" if upper is not None else "positive and finite"
        raise LandscapeError(f"{name} must be a number {allowed}; got {value!r}.")


def check_positive_values(value: Any, name: str, each: str) -> tuple[list[float], bool]:
    """(values, whether several were given) from a number, or a list, tuple or 1-D array of them;
    each must be finite and > 0. `name` is the option, `each` what one value is called."""
    many = isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) == 1
    items = list(value) if many else [value]
    if not items:
        raise LandscapeError(f"{name} is empty; give at least one {each} > 0.")
    for v in items:
        if not is_positive(v):
            raise LandscapeError(f"{each} must be a positive finite number; got {v!r}.")
    return [float(v) for v in items], many


def check_radii(rho: Any) -> tuple[list[float], bool]:
    """(radii, whether several were given): `check_positive_values` for the radius rho."""
    return check_positive_values(rho, "rho", "rho")


def check_probe(probe: Any) -> None:
    """Raise unless `probe` is a `landscape.Probe`."""
    from .probe import Probe

    if not isinstance(probe, Probe):
        raise LandscapeError(
            f"probe must be a landscape.Probe; got {type(probe).__name__}. Build one with "
            "landscape.Probe(model, data)."
        )
