"""Marks for numbers that did not reach their tolerance, shown on the line of the number.

A report must never show an unconverged number as if it had converged. Each function here reads
an estimator's result and the settings it ran with, and returns `(marked, note)`:

* `marked`: per number (one per eigenvalue; one for a trace or a density), whether it did not
  reach its tolerance;
* `note`: None when every number did, else one sentence: which numbers, their residual or
  standard error against the tolerance, and what to raise.

Tolerances: a Lanczos eigenvalue has converged when its residual ||H v - lambda v|| is within
`tol` |lambda| (the estimator's own rule; `EigenResult.converged`). A stochastic trace or
density mean has reached its tolerance when its standard error is within `rel_stderr` of its
absolute value (the budget's target, `EFFORT[budget]["rel_stderr"]`); an estimate without a
standard error (NaN) is marked too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

NOT_CONVERGED = "not converged"


def eigen_flags(result: Any, settings: dict[str, Any]) -> tuple[list[bool], str | None]:
    """Marks for the eigenvalues of an `EigenResult` (see the module docstring)."""
    values = np.asarray(result.eigenvalues, dtype=float)
    residuals = np.asarray(result.residuals, dtype=float)
    asked = int(settings.get("k", len(values)))
    missing = (f"only {len(values)} of the {asked} eigenvalues asked for were found; "
               if len(values) < asked else "")
    if result.converged and not missing:
        return [False] * len(values), None
    tol = float(settings.get("tol", result.tol))
    over = [not (r <= tol * abs(v)) for v, r in zip(values, residuals)]
    if not any(over):  # not converged overall, though no single residual says why: mark all
        over = [True] * len(values)
    which = [f"lambda_{i + 1} = {v:.4g} (residual {r:.2g} > tol |lambda| = {tol * abs(v):.2g})"
             for i, (v, r, bad) in enumerate(zip(values, residuals, over)) if bad]
    budget = settings.get("max_iter")
    spent = f"after {result.n_hvp} products" + (f" (max_iter={budget})" if budget else "")
    note = (f"{NOT_CONVERGED} {spent}: {missing}{'; '.join(which)}. Raise max_iter (or the "
            f"audit budget), or loosen tol={tol:g}.")
    return over, note


def stderr_flag(what: str, value: float, stderr: float, rel_stderr: float | None,
                raise_hint: str) -> tuple[list[bool], str | None]:
    """The mark of a stochastic estimate: its standard error is missing (NaN) or above
    `rel_stderr` |value| (no mark when `rel_stderr` is None and the error is finite)."""
    if not math.isfinite(stderr):
        return [True], (f"{what} has no standard error (one sample: its noise is unknown); "
                        f"{raise_hint}.")
    if rel_stderr is None or stderr <= rel_stderr * abs(value):
        return [False], None
    share = f"{stderr / abs(value):.0%} of |value|" if value else "larger than |value| = 0"
    return [True], (f"{what} did not reach its tolerance: standard error {stderr:.2g} is "
                    f"{share}, above the {rel_stderr:.0%} aimed at; {raise_hint}.")


def trace_flags(result: Any, settings: dict[str, Any],
                rel_stderr: float | None) -> tuple[list[bool], str | None]:
    """Marks for a `TraceResult` (exact traces are never marked)."""
    if result.method == "exact":
        return [False], None
    return stderr_flag("the trace", float(result.estimate), float(result.stderr), rel_stderr,
                       f"raise n_hvp (was {result.n_hvp})")


def density_flags(result: Any, settings: dict[str, Any],
                  rel_stderr: float | None) -> tuple[list[bool], str | None]:
    """Marks for a `DensityResult`, judged by its mean (tr(H)/n) and that mean's standard
    error (`trace_stderr / n` where the result has it, else `mean_stderr`)."""
    trace_stderr = getattr(result, "trace_stderr", None)
    stderr = (float(trace_stderr) / max(result.num_params, 1) if trace_stderr is not None
              else float(result.mean_stderr))
    return stderr_flag("the density's mean", float(result.mean), stderr, rel_stderr,
                       f"raise n_vectors (was {result.n_vectors})")
