"""Declarative checks of user arguments, in the spirit of scikit-learn's parameter constraints.

A public function states what each option may be, next to its signature:

    @validate_params(method=OneOf(TRACE_METHODS), n_hvp=Integer(1), tol=Positive())
    def hessian_trace(probe, *, method="hutch++", n_hvp=99, tol=1e-3): ...

and every call checks the bound arguments before the body runs, so a bad option raises a
`LandscapeError` naming the option, what it may be and what was given, before any work is
done. `check(constraints, values)` runs the same checks on values gathered by hand (an option
that depends on another, say).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .errors import LandscapeError

F = TypeVar("F", bound=Callable[..., Any])


class Constraint(Protocol):
    """Raises a `LandscapeError` when `value`, given as option `name`, is not allowed."""

    def __call__(self, name: str, value: Any) -> None: ...


@dataclass(frozen=True)
class OneOf:
    """One of `allowed` (compared with ==); `alternative` names what else is accepted."""

    allowed: tuple[Any, ...]
    alternative: str = ""

    def __call__(self, name: str, value: Any) -> None:
        ok = any(_same(value, a) for a in self.allowed)
        if not ok:
            more = f" or {self.alternative}" if self.alternative else ""
            raise LandscapeError(f"{name} must be one of {self.allowed}{more}; got {value!r}.")


@dataclass(frozen=True)
class Integer:
    """An int (not a bool) >= `minimum`."""

    minimum: int = 1

    def __call__(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
            raise LandscapeError(f"{name} must be an integer >= {self.minimum}; got {value!r}.")


def _same(value: Any, allowed: Any) -> bool:
    """`value` is `allowed`, or equal to it and of its type (True is not 1, "l2" not a tensor)."""
    if value is allowed:
        return True
    try:
        return isinstance(value, type(allowed)) and bool(value == allowed)
    except (TypeError, ValueError, RuntimeError):
        return False


@dataclass(frozen=True)
class Real:
    """A finite real number (not a bool) >= `minimum`."""

    minimum: float = 0.0

    def __call__(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < self.minimum:
            raise LandscapeError(f"{name} must be a finite number >= {self.minimum:g}; "
                                 f"got {value!r}.")


def is_positive(value: Any) -> bool:
    """A real number (not a bool or a string) that is finite and > 0."""
    if isinstance(value, (bool, str)):
        return False
    try:
        x = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a multi-element tensor
        return False
    return math.isfinite(x) and x > 0


@dataclass(frozen=True)
class Positive:
    """A finite number > 0 (and < `upper` when given)."""

    upper: float | None = None

    def __call__(self, name: str, value: Any) -> None:
        if not (is_positive(value) and (self.upper is None or float(value) < self.upper)):
            allowed = f"in (0, {self.upper})" if self.upper is not None \
                else "positive and finite"
            raise LandscapeError(f"{name} must be a number {allowed}; got {value!r}.")


@dataclass(frozen=True)
class Optional:
    """None, or what `inner` allows."""

    inner: Constraint

    def __call__(self, name: str, value: Any) -> None:
        if value is not None:
            self.inner(name, value)


def check(constraints: Mapping[str, Constraint], values: Mapping[str, Any]) -> None:
    """Check each named value against its constraint, in the order of `constraints`."""
    for name, constraint in constraints.items():
        if name in values:
            constraint(name, values[name])


def validate_params(**constraints: Constraint) -> Callable[[F], F]:
    """Decorate a function so that each call checks its arguments against `constraints`
    (keyed by parameter name) before the body runs. The constraints stay readable as the
    function's `__constraints__`."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        unknown = set(constraints) - set(signature.parameters)
        if unknown:
            raise TypeError(f"{fn.__qualname__} has no parameters {sorted(unknown)}")

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return fn(*args, **kwargs)  # let Python word the bad call
            bound.apply_defaults()
            check(constraints, bound.arguments)
            return fn(*args, **kwargs)

        checked.__constraints__ = dict(constraints)  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return decorate
