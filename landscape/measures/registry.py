"""The registry: what each named measure computes, with which settings, at what cost.

Every workflow that measures a checkpoint by name (`audit`, `compare`, `track`, a training
monitor) looks the name up here. A `MeasureSpec` holds:

- `description`: what the number means, one sentence for a report's table;
- `settings(effort, seed)`: the estimator's keyword settings for a budget's effort;
- `run(context, settings)`: runs the estimator and returns a `Measure` (value, uncertainty,
  settings, cost, details);
- `cost(settings)`: an estimate of the work before it is done, in Hessian-vector products
  (`n_hvp`), gradients (`n_gradient`) and forward passes over the data (`n_forward`);
- `optional`: costly measures run only when asked for by name;
- `knob`, `knob_min`, `share`: under a gradient budget, the effort key scaled to fit the
  measure's share of the budget, its smallest value, and that share's weight
  (`landscape.audit_budget`).

A new measure is one `register(MeasureSpec(...))` call (in a module of this package, imported
by its `__init__`); `audit` and `compare` pick it up. Estimators are imported when a measure
runs, so no estimator is imported at load time.

The measures a training monitor takes at every measurement are in the same module, in
`MONITOR_REGISTRY`: a `MonitorSpec` (description, the monitor settings it reads, the function
that returns its row entries, estimated cost, the optimizer it needs). `landscape.monitor`
registers its own with `register_monitor` and looks every name up here, so a measure registered
from anywhere is one a `CurvatureMonitor` can take.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._reduce import fnorm
from .._results import to_jsonable
from ..probe import Probe
from ..report import error_line

BUDGETS = ("quick", "standard", "thorough")

# Effort per budget. "quick" audits the digits CNN in 22 s of CPU time (docs/benchmarks/timings.md).
# rel_stderr: the tolerance of a stochastic trace or density mean (standard error within this
# fraction of its absolute value); a number that misses it is marked in every report.
EFFORT: dict[str, dict[str, Any]] = {
    "quick": dict(eig_tol=1e-3, eig_max_iter=60, trace_hvp=30, density_vectors=1,
                  density_steps=30, ascent_steps=10, average_draws=10, line_points=21,
                  grid_points=9, rel_stderr=0.2),
    "standard": dict(eig_tol=1e-4, eig_max_iter=150, trace_hvp=99, density_vectors=3,
                     density_steps=60, ascent_steps=20, average_draws=30, line_points=41,
                     grid_points=21, rel_stderr=0.1),
    "thorough": dict(eig_tol=1e-6, eig_max_iter=400, trace_hvp=300, density_vectors=8,
                     density_steps=90, ascent_steps=40, average_draws=100, line_points=81,
                     grid_points=41, rel_stderr=0.05),
}

# The measures every report states, from one evaluation and one gradient.
BASE_DESCRIPTIONS: dict[str, str] = {
    "loss": "Mean loss over all probed samples at the checkpoint (exact).",
    "accuracy": "Fraction of probed samples classified correctly at the checkpoint (exact).",
    "gradient_norm": "Euclidean norm of the full-data gradient at the checkpoint (exact); "
                     "near zero at a minimum.",
}


@dataclass(frozen=True)
class Measure:
    """One measured quantity: headline `value`, its uncertainty, settings and cost.

    `stderr` is the standard error of a Monte Carlo estimate (None when the value is not a
    sample mean); `error_bound` a deterministic bound on |value - truth| where one is known
    (for a Lanczos eigenvalue `EigenResult.error_bounds`: min(r, r^2 / gap) from the true
    residual r = ||H v - theta v|| of the returned vector). Worst-case sharpness and flatness
    are lower bounds of a maximum and carry neither. `error` is None when the measure ran; when
    it raised, it is `{"type": exception class name, "message": its message}`, `value` is NaN
    and `cost` what was spent before the failure.

    `values` lists every number asked for where there are several (all k eigenvalues, `value`
    being the first), else None. `unconverged` marks, per number (`values`, or the one
    `value`), those that did not reach their tolerance, and `note` says which, with their
    residual or standard error and what to raise (None when all did); every report shows the
    mark and the note on the line of the number (`landscape.measures.flags`).
    """

    name: str
    value: float
    stderr: float | None
    description: str
    settings: dict[str, Any]
    cost: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    error_bound: float | None = None
    error: dict[str, str] | None = None
    values: list[float] | None = None
    unconverged: list[bool] | None = None
    note: str | None = None

    @property
    def converged(self) -> bool:
        """False when any of its numbers did not reach its tolerance."""
        return not any(self.unconverged or ())

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass
class MeasureContext:
    """What a measure runs on: the probe, progress bars, and the raw results of the measures
    run before it (by name: figures draw them, later measures reuse them)."""

    probe: Probe
    progress: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    loss: float | None = None
    has_accuracy: bool = False
    # the caller's options some measures need: "lr" (trace_ratio), "batch_sizes" (batch_spectrum)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MeasureSpec:
    """A named measure: description, settings for an effort, how to run it, its cost."""

    name: str
    description: str
    settings: Callable[[dict[str, Any], int], dict[str, Any]]
    run: Callable[[MeasureContext, dict[str, Any]], Measure]
    cost: Callable[[dict[str, Any]], dict[str, int]]
    optional: bool = False
    # Under a gradient budget (`landscape.audit_budget`): the effort key that decides the
    # cost (None: fixed), its smallest value, and the measure's weight in the split.
    knob: str | None = None
    knob_min: int = 1
    share: float = 0.05


REGISTRY: dict[str, MeasureSpec] = {}


def register(spec: MeasureSpec) -> MeasureSpec:
    """Add `spec` to the registry (a name registered twice is replaced); returns it."""
    REGISTRY[spec.name] = spec
    return spec


@dataclass(frozen=True)
class MonitorSpec:
    """A measure of a training monitor (`landscape.monitor.CurvatureMonitor`).

    `settings` names the fields of the monitor's `Settings` it reads (tol, max_iter, n_hvp,
    max_basis, seed); `run(context)` takes a `landscape.monitor.MeasureContext` and returns the
    measure's row entries (a dict of floats); `cost(settings)` estimates its work from the
    monitor's `Settings` before it runs (an upper bound: warm starts and shared results spend
    less); `requires(optimizer)`, when not None, raises `LandscapeError` when the monitor is
    built with an optimizer the measure cannot use.
    """

    name: str
    description: str
    settings: tuple[str, ...]
    run: Callable[[Any], dict[str, float]]
    cost: Callable[[Any], dict[str, int]]
    requires: Callable[[Any], None] | None = None


MONITOR_REGISTRY: dict[str, MonitorSpec] = {}


def register_monitor(spec: MonitorSpec) -> MonitorSpec:
    """Add `spec` to the monitor's measures (a name registered twice is replaced); returns it."""
    MONITOR_REGISTRY[spec.name] = spec
    return spec


def monitor_cost(names: list[str] | tuple[str, ...], settings: Any) -> dict[str, dict[str, int]]:
    """The cost estimate of each named monitor measure for the monitor's `Settings`."""
    return {n: MONITOR_REGISTRY[n].cost(settings) for n in names}


def measure_names(*, optional: bool | None = None) -> tuple[str, ...]:
    """Registered names in run order; `optional=False` only the defaults, True only the costly."""
    return tuple(n for n, s in REGISTRY.items() if optional is None or s.optional == optional)


def descriptions() -> dict[str, str]:
    """Every measure's description, the base measures (loss, accuracy, gradient norm) first."""
    return {**BASE_DESCRIPTIONS, **{n: s.description for n, s in REGISTRY.items()}}


def estimated_cost(names: list[str] | tuple[str, ...], budget: str, seed: int = 0
                   ) -> dict[str, dict[str, int]]:
    """The cost estimate of each named measure at `budget`, before anything runs."""
    return {n: REGISTRY[n].cost(REGISTRY[n].settings(EFFORT[budget], seed)) for n in names}


def base_measures(probe: Probe) -> tuple[dict[str, Measure], float]:
    """Loss, accuracy (when the task has one) and gradient norm from one evaluation and one
    gradient; the cost is stated once, on the loss, so summing the cost column counts it once.
    Returns the measures and the loss."""
    meter = probe.meter()
    ev = probe.evaluate()
    _, grad = probe.loss_and_gradient()
    shared = ["loss", "accuracy", "gradient_norm"] if ev.accuracy is not None \
        else ["loss", "gradient_norm"]
    cost = {**meter.cost().to_dict(), "shared_by": shared}
    out = {"loss": Measure("loss", ev.loss, None, BASE_DESCRIPTIONS["loss"], {}, cost)}
    if ev.accuracy is not None:
        out["accuracy"] = Measure("accuracy", ev.accuracy, None, BASE_DESCRIPTIONS["accuracy"],
                                  {}, {"shared_with": "loss"})
    out["gradient_norm"] = Measure("gradient_norm", fnorm(grad), None,
                                   BASE_DESCRIPTIONS["gradient_norm"], {},
                                   {"shared_with": "loss"})
    return out, ev.loss


def run_measure(spec: MeasureSpec, context: MeasureContext, settings: dict[str, Any],
                say: Callable[[str], None], caller: str = "audit") -> Measure:
    """Run one measure; when it raises, a `Measure` with NaN value, the error and the cost
    spent, a RuntimeWarning, and the other measures go on."""
    say(f"measuring {spec.name} ...")
    started = context.probe.meter()
    try:
        return spec.run(context, settings)
    except Exception as exc:  # noqa: BLE001 - one failed measure must not lose the report
        error = {"type": type(exc).__name__, "message": str(exc)}
        say(f"{spec.name} failed: {error_line(error)}")
        warnings.warn(f"{caller}: {spec.name} failed ({error_line(error)}); the other "
                      "measures are still reported.", RuntimeWarning, stacklevel=3)
        return Measure(spec.name, float("nan"), None, spec.description, {},
                       started.cost().to_dict(), error=error)


def from_result(name: str, value: float, stderr: float | None, result: Any,
                settings: dict[str, Any], keep: bool = True,
                error_bound: float | None = None) -> Measure:
    """A Measure from an estimator's result: its cost fields, and its whole dict if `keep`
    (else only its short fields: no long arrays)."""
    data = result.to_dict() if hasattr(result, "to_dict") else {}
    cost_keys = ("n_hvp", "n_forward", "n_backward", "n_gradient", "seconds", "cost")
    cost = {k: data[k] for k in cost_keys if k in data}
    if isinstance(cost.get("cost"), dict):
        cost = {**cost.pop("cost"), **cost}
    details = data if keep else {k: v for k, v in data.items()
                                 if not isinstance(v, list) or len(v) <= 16}
    return Measure(name, value, stderr, REGISTRY[name].description, settings, cost, details,
                   error_bound=error_bound)

