"""Validation of user options, shared by the estimators: every bad value raises a
`LandscapeError` that names the option, what it must be and what was given.

`check_option`, `check_int` and `check_positive` are the one-line forms of the declarative
constraints of `landscape._validate` (`OneOf`, `Integer`, `Positive`), for checks made inside
a function body; a public function states its options with `validate_params` instead."""

from __future__ import annotations

from typing import Any

from ._validate import Integer, OneOf, Positive, is_positive
from .errors import LandscapeError


def check_option(name: str, value: Any, allowed: tuple) -> None:
    """Raise unless `value` is one of `allowed`."""
    OneOf(tuple(allowed))(name, value)


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raise unless `value` is an int (not a bool) >= `minimum`."""
    Integer(minimum)(name, value)


def check_positive(name: str, value: Any, *, upper: float | None = None) -> None:
    """Raise unless `value` is a finite number > 0 (and < `upper` when given)."""
    Positive(upper)(name, value)


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
