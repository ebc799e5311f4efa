"""Quadratic-model agreement: measured sharpness beside its second-order prediction, per radius.

Around a critical point the loss is L(w + delta) ~ L(w) + delta^T H delta / 2, which predicts

    worst case (l2 ball of radius rho):   S_max ~ rho^2 lambda_max / 2
    average case (delta ~ N(0, rho^2 I)): S_avg ~ rho^2 tr(H) / 2

(docs/measures.md, "Ground truths the tests use"; rho is the per-coordinate standard
deviation in the average case). For each radius we report both predictions beside the measured
`sharpness` values and the ratio measured / predicted. Near w the ratios are 1 on any smooth
loss at a minimum; the radius
where a ratio leaves the band [0.8, 1.25] (a factor 1.25 either way, symmetric in log) is where
the landscape stops being quadratic at that scale: beyond it, Hessian-based measures (lambda_max,
tr(H)) no longer describe what a perturbation of that size does.

Caveats, each reported so users can tell them apart:
* Off a critical point the worst case gains a first-order term up to rho ||g|| (reported as
  `gradient_term`): where it is not small against rho^2 lambda_max / 2 the worst-case ratio
  departs because of the gradient, not the curvature. The average case is unaffected by g
  (E[g^T delta] = 0).
* The measured worst case is a lower bound (projected gradient ascent), so ratios below 1 can
  be the ascent's shortfall; the average case is a Monte Carlo estimate (its standard error and
  that of tr(H) are propagated into the ratio's).
* lambda_max and tr(H) come from the caller or from `hessian_eigenvalues` / `hessian_trace`
  (Lanczos and Hutch++): errors there shift every ratio by the same factor.

A ratio counts as leaving the band when it is outside [low, high] by more than 2 standard
errors (no error for the worst case), so that Monte Carlo noise alone does not trigger it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._checks import check_int, check_radii, is_positive
from ._reduce import fnorm
from ._results import to_jsonable
from .errors import LandscapeError
from .probe import Cost, Probe
from .sharpness import sharpness

BAND = (0.8, 1.25)
N_SIGMA = 2.0  # a Monte Carlo ratio leaves the band only when 2 standard errors outside it


@dataclass(frozen=True)
class AgreementResult:
    """Measured sharpness beside the quadratic model's prediction. Per-radius fields are tuples
    aligned with `rhos` (ascending).

    Attributes:
        rhos: the radii (l2 radius for the worst case, per-coordinate std for the average).
        predicted_worst: rho^2 lambda_max / 2. measured_worst: `sharpness(kind="worst")`.
        ratio_worst: measured_worst / predicted_worst.
        predicted_average: rho^2 tr(H) / 2. measured_average: `sharpness(kind="average")`;
            measured_average_stderr its Monte Carlo error.
        ratio_average, ratio_average_stderr: measured / predicted and its standard error (the
            measurement's and the trace's errors in quadrature).
        gradient_term: rho ||g||, the first-order term the worst case can gain off a minimum.
        departure_worst, departure_average: the smallest radius whose ratio leaves the band
            (by more than 2 standard errors for the average case); None if none does.
        value: the smaller of the two departure radii (None if neither departs).
        band: (low, high), the band of ratios accepted as quadratic.
        top_eigenvalue: lambda_max (largest algebraic eigenvalue of H) used; trace, trace_stderr:
            tr(H) used and its error (0 when given without one).
        grad_norm: ||g|| at w. loss: L(w).
        settings: the options used. seed: the sharpness seed. cost: probe work and seconds,
            including the curvature estimates when computed here.
    """

    rhos: tuple[float, ...]
    predicted_worst: tuple[float, ...]
    measured_worst: tuple[float, ...]
    ratio_worst: tuple[float, ...]
    predicted_average: tuple[float, ...]
    measured_average: tuple[float, ...]
    measured_average_stderr: tuple[float, ...]
    ratio_average: tuple[float, ...]
    ratio_average_stderr: tuple[float, ...]
    gradient_term: tuple[float, ...]
    departure_worst: float | None
    departure_average: float | None
    value: float | None
    band: tuple[float, float]
    top_eigenvalue: float
    trace: float
    trace_stderr: float
    grad_norm: float
    loss: float
    settings: dict[str, Any]
    seed: int
    cost: Cost

    def rows(self) -> list[dict[str, float]]:
        """One dict per radius (a table)."""
        keys = ("predicted_worst", "measured_worst", "ratio_worst", "predicted_average",
                "measured_average", "measured_average_stderr", "ratio_average",
                "ratio_average_stderr", "gradient_term")
        return [{"rho": r, **{k: getattr(self, k)[i] for k in keys}}
                for i, r in enumerate(self.rhos)]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def quadratic_agreement(
    probe: Probe,
    rhos: float | Sequence[float],
    *,
    top_eigenvalue: float | None = None,
    trace: float | None = None,
    trace_stderr: float | None = None,
    band: tuple[float, float] = BAND,
    steps: int = 20,
    restarts: int = 1,
    n_samples: int = 100,
    n_hvp: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> AgreementResult:
    """Worst- and average-case sharpness per radius beside rho^2 lambda_max / 2, rho^2 tr(H) / 2.

    Args:
        probe: the model, data and loss.
        rhos: radii (> 0); the worst case uses the l2 ball, the average case N(0, rho^2 I).
        top_eigenvalue: lambda_max of H (largest algebraic, > 0). None: computed with
            `hessian_eigenvalues(probe, k=1, tol=tol, seed=seed)`.
        trace: tr(H) (> 0). None: computed with `hessian_trace(probe, n_hvp=n_hvp,
            method="hutch++", seed=seed)`, whose standard error is then used.
        trace_stderr: the error of a given trace (None: 0). Only with `trace`.
        band: (low, high) with 0 < low < 1 < high: ratios inside count as quadratic.
        steps, restarts: the worst-case ascent (see `sharpness`).
        n_samples: draws for the average case.
        n_hvp, tol: the curvature estimators' budgets when they are computed here.
        seed: seeds the sharpness measurements and the curvature estimators.
        progress: show progress bars.

    Returns:
        An `AgreementResult`.

    Raises:
        LandscapeError: bad radii, band or curvature values, a trace_stderr without trace, or a
            non-positive lambda_max / tr(H) (the quadratic model predicts no increase).

    Example:
        >>> from landscape.data import quadratic_probe
        >>> probe = quadratic_probe([3.0, 1.0])  # L(w) = 0.5 (3 w_0^2 + w_1^2), at its minimum 0
        >>> r = quadratic_agreement(probe, [0.1, 1.0], top_eigenvalue=3.0, trace=4.0)
        >>> [round(x, 6) for x in r.ratio_worst], r.value is None
        ([1.0, 1.0], True)
    """
    radii, _ = check_radii(rhos)
    radii = sorted(radii)
    low, high = _check_band(band)
    check_int("n_hvp", n_hvp, 1)
    if trace_stderr is not None and trace is None:
        raise LandscapeError("trace_stderr needs trace; give both, or neither to estimate them.")
    for name, v in (("top_eigenvalue", top_eigenvalue), ("trace", trace)):
        if v is not None and not is_positive(v):
            raise LandscapeError(
                f"{name} must be a positive finite number (the quadratic model predicts an "
                f"increase only for positive curvature); got {v!r}."
            )
    if trace_stderr is not None and not (is_positive(trace_stderr) or trace_stderr == 0):
        raise LandscapeError(f"trace_stderr must be a finite number >= 0; got {trace_stderr!r}.")
    settings = dict(band=(low, high), steps=steps, restarts=restarts, n_samples=n_samples,
                    n_hvp=n_hvp, tol=tol, curvature_given=(top_eigenvalue is not None,
                                                           trace is not None))
    meter = probe.meter()
    if top_eigenvalue is None or trace is None:
        from .curvature import hessian_eigenvalues, hessian_trace  # noqa: PLC0415 - optional

        if top_eigenvalue is None:
            top_eigenvalue = float(hessian_eigenvalues(probe, k=1, tol=tol, seed=seed)
                                   .eigenvalues[0])
        if trace is None:
            est = hessian_trace(probe, n_hvp=n_hvp, method="hutch++", seed=seed)
            trace, trace_stderr = float(est.estimate), float(est.stderr)
        for name, v in (("top_eigenvalue", top_eigenvalue), ("trace", trace)):
            if not is_positive(v):
                raise LandscapeError(
                    f"the estimated {name} is {v:.4g} <= 0: the quadratic model predicts no "
                    "increase (a saddle or maximum); this comparison needs a minimum."
                )
    top_eigenvalue, trace, trace_se = float(top_eigenvalue), float(trace), float(trace_stderr or 0)
    loss, g = probe.loss_and_gradient()
    gnorm = fnorm(g)
    common = dict(steps=steps, restarts=restarts, n_samples=n_samples, seed=seed,
                  progress=progress)
    worst = sharpness(probe, radii, kind="worst", **common)
    average = sharpness(probe, radii, kind="average", **common)
    pw = [r**2 * top_eigenvalue / 2 for r in radii]
    pa = [r**2 * trace / 2 for r in radii]
    mw = [res.value for res in worst]
    ma = [res.value for res in average]
    ma_se = [float(res.stderr) for res in average]
    rw = [m / p for m, p in zip(mw, pw, strict=True)]
    ra = [m / p for m, p in zip(ma, pa, strict=True)]
    ra_se = [abs(r) * math.hypot(se / m if m != 0 else math.inf, trace_se / trace)
             if se > 0 or trace_se > 0 else 0.0
             for r, m, se in zip(ra, ma, ma_se, strict=True)]
    dep_w = _departure(radii, rw, [0.0] * len(radii), low, high)
    dep_a = _departure(radii, ra, ra_se, low, high)
    deps = [d for d in (dep_w, dep_a) if d is not None]
    return AgreementResult(
        rhos=tuple(radii), predicted_worst=tuple(pw), measured_worst=tuple(mw),
        ratio_worst=tuple(rw), predicted_average=tuple(pa), measured_average=tuple(ma),
        measured_average_stderr=tuple(ma_se), ratio_average=tuple(ra),
        ratio_average_stderr=tuple(ra_se), gradient_term=tuple(r * gnorm for r in radii),
        departure_worst=dep_w, departure_average=dep_a, value=min(deps) if deps else None,
        band=(low, high), top_eigenvalue=float(top_eigenvalue), trace=float(trace),
        trace_stderr=trace_se, grad_norm=gnorm, loss=loss, settings=settings, seed=seed,
        cost=meter.cost(),
    )


def _departure(radii: list[float], ratios: list[float], stderrs: list[float], low: float,
               high: float) -> float | None:
    """The smallest radius whose ratio is outside [low, high] by more than N_SIGMA errors."""
    for r, q, se in zip(radii, ratios, stderrs, strict=True):
        if not math.isfinite(q) or q + N_SIGMA * se < low or q - N_SIGMA * se > high:
            return r
    return None


def _check_band(band: Any) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in band)
    except (TypeError, ValueError):
        raise LandscapeError(f"band must be a pair (low, high); got {band!r}.") from None
    if not (0 < low < 1 < high and math.isfinite(high)):
        raise LandscapeError(f"band must satisfy 0 < low < 1 < high; got {band!r}.")
    return low, high
