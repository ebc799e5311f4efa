"""How much the data decides: one scalar estimator on disjoint parts of the probe's samples.

A top eigenvalue, a trace or a sharpness measured on 128 samples is a property of those 128
samples as much as of the weights: the same checkpoint measured on other samples can give a
different number (by a factor of several on small sets). `data_spread` measures how much, by
running the estimator on `n_splits` disjoint random parts of the data and reporting the values,
their mean, their spread and its standard error, so a user can choose how many samples a
number needs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from ._checks import check_int
from ._results import to_jsonable
from .errors import LandscapeError
from .probe import Cost, Probe

# Named estimators: (what is called, the scalar taken from its result, the default settings).
NAMED = ("top_eigenvalue", "trace", "sharpness", "flatness")


@dataclass(frozen=True)
class DataSpread:
    """A scalar estimator evaluated on disjoint random parts of the probe's samples.

    Attributes:
        estimator: its name ("top_eigenvalue", "trace", "sharpness", "flatness" or the
            callable's `__name__`).
        settings: the keyword arguments it was called with (the same for every part).
        values: shape (n_splits,), the estimator's value on each part.
        n_samples: shape (n_splits,), the number of samples in each part (they differ by at
            most one).
        mean: the mean of `values`. For an estimator linear in the loss (the trace, the loss)
            the n_samples-weighted mean equals the value on all the data; for a convex one (the
            top eigenvalue) the value on all the data is at most the weighted mean.
        std: the sample standard deviation of `values` (ddof=1): how much the number changes
            from one set of n_samples samples to another (NaN with one part).
        stderr: std / sqrt(n_splits), the standard error of `mean` (NaN with one part).
        split_stderr: shape (n_splits,), each part's own standard error where the estimator
            reports one (a Monte Carlo trace or average sharpness), NaN elsewhere: when `std`
            is well above these, the data, not the estimator's noise, makes the spread.
        n_splits, seed: the number of parts and the seed of the random assignment of samples.
        cost: what all parts spent together (products, passes, seconds).
    """

    estimator: str
    settings: dict[str, Any]
    values: np.ndarray
    n_samples: np.ndarray
    mean: float
    std: float
    stderr: float
    split_stderr: np.ndarray
    n_splits: int
    seed: int
    cost: Cost = field(default_factory=Cost)

    @property
    def relative_std(self) -> float:
        """std / |mean|: the relative change of the number between sets of n_samples samples."""
        return self.std / abs(self.mean) if self.mean else math.nan

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable(self)
        out["relative_std"] = to_jsonable(self.relative_std)
        return out


def data_spread(
    probe: Probe,
    estimator: str | Callable[..., Any],
    n_splits: int = 4,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> DataSpread:
    """Evaluate a scalar estimator on `n_splits` disjoint random parts of the probe's samples.

    The samples are assigned to parts by `partition(probe, n_splits, seed)` (a random
    permutation cut into pieces whose sizes differ by at most one); the estimator runs on each
    part with the same `kwargs` and the same `seed` (passed as `seed=` to the named estimators
    and to a callable that has a `seed` parameter), so the parts differ only by their data; the
    values are summarized by their mean, sample standard deviation and standard error of the
    mean.

    Args:
        probe: the model, data and loss; its samples are split.
        estimator: "top_eigenvalue" (`hessian_eigenvalues(k=1)`, value: the largest
            eigenvalue), "trace" (`hessian_trace`, value: the estimate), "sharpness"
            (`sharpness`, needs `rho=`), "flatness" (`first_order_flatness`, needs `rho=`), or
            any callable `estimator(probe, **kwargs)` returning a number, an `EigenResult`
            (its first eigenvalue is taken), a `TraceResult` (its estimate) or a result with
            a `value`.
        n_splits: number of disjoint parts (2 <= n_splits <= number of samples; 1 is allowed
            and gives NaN spreads).
        seed: seeds the assignment of samples to parts, and the estimator on every part.
        **kwargs: passed to the estimator on every part.

    Returns:
        A `DataSpread`.

    Raises:
        LandscapeError: an unknown estimator name, a bad n_splits, or a result with no scalar.

    Example:
        >>> import torch
        >>> from landscape import Probe, data_spread
        >>> x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
        >>> probe = Probe(torch.nn.Linear(3, 2), (x, y))
        >>> spread = data_spread(probe, lambda p: p.loss(), n_splits=4)
        >>> spread.n_samples.tolist()
        [10, 10, 10, 10]
    """
    check_int("n_splits", n_splits)
    name, run = _resolve(estimator)
    if _takes_seed(run):
        kwargs = {**kwargs, "seed": seed}
    values, sizes, errors = [], [], []
    total = Cost()
    for part in partition(probe, n_splits, seed):
        meter = part.meter()
        result = run(part, **kwargs)
        total = _add(total, meter.cost())
        values.append(_scalar(result, name))
        sizes.append(part.n_samples)
        err = getattr(result, "stderr", None)
        errors.append(float(err) if isinstance(err, (int, float)) else math.nan)
    vals = np.asarray(values, dtype=float)
    std = float(vals.std(ddof=1)) if n_splits > 1 else math.nan
    return DataSpread(
        estimator=name, settings={k: v for k, v in kwargs.items() if k != "seed"}, values=vals,
        n_samples=np.asarray(sizes, dtype=int), mean=float(vals.mean()), std=std,
        stderr=std / math.sqrt(n_splits), split_stderr=np.asarray(errors, dtype=float),
        n_splits=n_splits, seed=seed, cost=total,
    )


def partition(probe: Probe, n_parts: int, seed: int = 0) -> list[Probe]:
    """Probes over `n_parts` disjoint random parts of the probe's samples that together hold
    all of them: the global sample indices are shuffled by `torch.randperm(n_samples)` from a
    generator seeded with `seed`, cut into `n_parts` consecutive pieces whose sizes differ by
    at most one (the first `n_samples % n_parts` pieces one larger, as `numpy.array_split`),
    and each piece sorted (`Probe.sample_parts`; distributed as `Probe.sample_groups`).

    Raises:
        LandscapeError: n_parts is not in [1, n_samples].
    """
    total = probe.n_samples
    if isinstance(n_parts, bool) or not isinstance(n_parts, int) or not 1 <= n_parts <= total:
        raise LandscapeError(
            f"n_parts must be an integer in [1, {total}] (the number of samples); got "
            f"{n_parts!r}.")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return probe.sample_parts([piece.sort().values for piece in torch.tensor_split(order, n_parts)])


def _resolve(estimator: str | Callable[..., Any]) -> tuple[str, Callable[..., Any]]:
    """(name, callable) of a named estimator or a user's callable."""
    if callable(estimator):
        return getattr(estimator, "__name__", type(estimator).__name__), estimator
    if estimator == "top_eigenvalue":
        from .curvature import hessian_eigenvalues

        return estimator, lambda p, **kw: hessian_eigenvalues(p, **{"k": 1, **kw})
    if estimator == "trace":
        from .curvature import hessian_trace

        return estimator, hessian_trace
    if estimator == "sharpness":
        from .sharpness import sharpness

        return estimator, sharpness
    if estimator == "flatness":
        from .flatness import first_order_flatness

        return estimator, first_order_flatness
    raise LandscapeError(
        f"estimator must be one of {NAMED} or a callable estimator(probe, **kwargs); "
        f"got {estimator!r}.")


def _takes_seed(run: Callable[..., Any]) -> bool:
    """Whether `run` accepts a `seed` keyword (named estimators all do)."""
    try:
        params = inspect.signature(run).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _scalar(result: Any, name: str) -> float:
    """The number an estimator's result stands for."""
    if isinstance(result, (int, float, np.floating, np.integer)):
        return float(result)
    if hasattr(result, "eigenvalues"):
        return float(result.eigenvalues[0])
    for attr in ("estimate", "value"):
        value = getattr(result, attr, None)
        if isinstance(value, (int, float, np.floating, np.integer)):
            return float(value)
    raise LandscapeError(
        f"estimator {name!r} returned a {type(result).__name__}, which has no scalar "
        "(a number, eigenvalues, estimate or value); return a number from the callable.")


def _add(a: Cost, b: Cost) -> Cost:
    return Cost(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(Cost)})
