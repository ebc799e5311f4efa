"""Audit one checkpoint: every standard measure of its minimum, with uncertainty and cost.

`audit(probe)` runs the estimators with defaults a user can accept without reading the papers and
returns an `AuditReport`: one `Measure` per quantity (a headline `value`, its `stderr` where it is
estimated, the settings and the cost), plus the raw results (density, line, surface) for figures.
`AuditReport.write(out_dir)` writes report.json, report.md, report.html and the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._checks import check_positive
from ._validate import OneOf, validate_params
from .audit_budget import (
    FORWARD_GRADIENTS,
    GRADIENT_BUDGETS,
    HVP_GRADIENTS,
    UnitCosts,
    budget_note,
    budget_plan,
    budget_text,
    calibrate,
    plan_text,
    refit,
    skipped_measure,
    spent_counts,
    timed_units,
    timing_means_something,
)
from .audit_resume import AuditProgress, audit_key
from .errors import LandscapeError
from .measures import (
    BUDGETS,
    EFFORT,
    REGISTRY,
    Measure,
    MeasureContext,
    base_measures,
    descriptions,
    measure_names,
    run_measure,
)
from .probe import Probe
from .provenance import provenance, provenance_section
from .report import (
    Report,
    Row,
    Section,
    cost_text,
    error_line,
    marked_values_text,
    save_figures,
    uncertainty_text,
    value_text,
    value_with_uncertainty,
    with_note,
)

__all__ = ["BUDGETS", "DEFAULT_MEASURES", "DESCRIPTIONS", "FORWARD_GRADIENTS",
           "GRADIENT_BUDGETS", "HVP_GRADIENTS", "MEASURES", "OPTIONAL_MEASURES", "AuditReport",
           "Measure", "audit", "audit_plan", "error_line", "plan_text", "value_cell"]

# The names below are read at import time; measures registered later are found through
# `landscape.measures.REGISTRY`, which `audit` reads at call time.
DESCRIPTIONS: dict[str, str] = descriptions()
MEASURES = ("loss", *measure_names())  # "loss" is always measured; naming it is allowed
# Costly measures beyond the peers: only when asked for with `measures=`.
OPTIONAL_MEASURES = measure_names(optional=True)
DEFAULT_MEASURES = measure_names(optional=False)
# Computed exactly on the data (no estimate): their uncertainty reads "exact".
EXACT = ("loss", "accuracy", "gradient_norm")


@dataclass(frozen=True)
class AuditReport:
    """Everything `audit` measured. `measures` is keyed by what each number is."""

    measures: dict[str, Measure]
    budget: str
    seed: int
    seconds: float
    n_params: int
    n_samples: int
    results: dict[str, Any] = field(default_factory=dict, repr=False)
    name: str | None = None
    data_name: str | None = None
    provenance: dict[str, Any] | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    gradient_seconds: float | None = None
    spent: dict[str, Any] = field(default_factory=dict)

    @property
    def spent_gradients(self) -> float | None:
        """The audit's wall time in gradients (`seconds / gradient_seconds`)."""
        if not self.gradient_seconds:
            return None
        return self.seconds / self.gradient_seconds

    @property
    def title(self) -> str:
        """"Audit of NAME" (the checkpoint's name), or "Checkpoint audit" when unnamed."""
        return f"Audit of {self.name}" if self.name else "Checkpoint audit"

    def summary(self) -> str:
        """One plain-text line: what was audited, on which data, with which effort."""
        what = self.name or "an unnamed checkpoint (pass name= to audit)"
        data = f"{self.data_name} ({self.n_samples} samples)" if self.data_name \
            else f"{self.n_samples} samples"
        line = (f"Checkpoint: {what}. Data: {data}. {self.n_params} parameters, budget "
                f"{self.budget}, seed {self.seed}, {self.seconds:.1f} s.")
        if self.plan:
            line += f" {plan_text(self.plan)}"
        if self.spent:
            line += (f" Spent {self.spent['n_hvp']} products, {self.spent['n_gradient']} "
                     f"gradients and {self.spent['n_forward']} forward passes (about "
                     f"{self.spent['gradients']:g} gradients at the plan's costs).")
        if self.spent_gradients is not None:
            line += (f" Took {self.spent_gradients:.0f} gradients of time (one gradient: "
                     f"{self.gradient_seconds:.3g} s).")
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "data": self.data_name,
            "budget": self.budget, "seed": self.seed, "seconds": self.seconds,
            "n_params": self.n_params, "n_samples": self.n_samples,
            "plan": self.plan, "spent": self.spent,
            "gradient_seconds": self.gradient_seconds,
            "spent_gradients": self.spent_gradients,
            "measures": {k: m.to_dict() for k, m in self.measures.items()},
            "provenance": self.provenance,
        }

    def to_report(self, title: str | None = None) -> Report:
        """The report's content: one table row per measure (value, uncertainty, meaning, cost)."""
        rows = tuple(Row((f"`{m.name}`", value_cell(m),
                          "exact" if m.name in EXACT else
                          with_note(uncertainty_text(m.stderr, m.error_bound), m.note),
                          m.description, cost_text(m.cost))) for m in self.measures.values())
        table = Section(columns=("measure", "value", "uncertainty", "what it means", "cost"),
                        rows=rows)
        sections = (table, provenance_section(self.provenance))
        return Report(title or self.title, self.summary(),
                      tuple(s for s in sections if s is not None), self.to_dict())

    def to_json(self, indent: int = 2) -> str:
        return self.to_report().to_json(indent)

    def to_markdown(self, title: str | None = None, figures: Sequence[str] = ()) -> str:
        """The report as Markdown: a title (default `self.title`), the summary line, one table
        row per measure (cells escaped so no text breaks the table) and the figures."""
        return self.to_report(title).to_markdown(figures)

    def to_html(self, title: str | None = None, figures: Sequence[Path] = ()) -> str:
        return self.to_report(title).to_html(figures)

    def write(self, out: str | Path, title: str | None = None,
              column: str | float = "single", log: bool = True) -> list[Path]:
        """Write report.json, report.md, report.html and the figures (PDF and 300 dpi PNG) to
        `out`; `column` sizes the figures ("single", "double" or inches, see
        `landscape.plot.figure_size`); `log=False` draws linear loss scales and contours."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        figures = audit_figures(self.results, out, column, log)
        return [*self.to_report(title).write(out, "report", figures), *figures]


@validate_params(budget=OneOf(BUDGETS))
def audit(
    probe: Probe,
    *,
    budget: str = "standard",
    seed: int = 0,
    measures: Sequence[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    name: str | None = None,
    data_name: str | None = None,
    checkpoint: str | Path | None = None,
    lr: float | None = None,
    batch_sizes: Sequence[int] | None = None,
    resume: str | Path | None = None,
    max_gradients: float | None = None,
) -> AuditReport:
    """Measure the minimum at the probe's weights by every standard measure.

    Args:
        probe: the model, data and loss to audit.
        budget: "quick", "standard" or "thorough": scales iterations, Hessian-vector
            products, Monte Carlo draws and grid sizes (`landscape.measures.EFFORT`). "quick"
            is also a budget of `GRADIENT_BUDGETS["quick"]` (150) gradients of time, split over
            the measures and kept (`landscape.audit_budget`).
        seed: seed of every stochastic estimator (each gets this seed).
        measures: subset of `landscape.audit.MEASURES` (default: `DEFAULT_MEASURES`, all but
            the costly `OPTIONAL_MEASURES`: PAC-Bayes flatness, local entropy and quadratic-model
            agreement). The loss, accuracy and gradient norm are always reported.
        progress: show progress bars.
        log: called with a line before each measure (the CLI prints them).
        name: what is audited (a checkpoint's file name): the report's title and summary name
            it. The CLI passes the checkpoint's file name.
        data_name: which data (e.g. "digits, train split"), named in the report's summary
            and provenance.
        checkpoint: the checkpoint file the weights came from: its path and SHA-256 go into
            the report's provenance (with the versions, device, dtype, data, seed, budget and
            date, which are always there).
        lr: the training learning rate: adds `trace_ratio`, tr(H) x lr / 2, SGD's
            linear-stability ratio (a minimum is linearly stable for SGD only if it is <= 1).
        batch_sizes: adds `batch_spectrum`, the top eigenvalue of mini-batch Hessians of these
            sizes beside the full data's (with its figure).
        resume: a JSON file where each measure is saved as soon as it finishes (replaced
            atomically), so an interrupted or failed audit keeps what it measured. A rerun with
            the same file, weights, data, budget and seed takes the saved measures instead of
            measuring them again (see `landscape.audit_resume`). None: nothing saved.
        max_gradients: the budget in gradients of time (one gradient: the wall time of a
            full-data gradient on this checkpoint), for any `budget`: stated first, split
            over the measures, kept in products, gradients and forward passes, and reported
            as planned and spent (`report.plan`, `report.spent`); each measure is at most
            at the budget's effort. None: the budget's own (150 for "quick", no limit for
            "standard" and "thorough").

    Returns:
        An `AuditReport`; `report.measures[name].value` is each headline number.

    Raises:
        LandscapeError: unknown budget or measure names, max_gradients not positive.
    """
    known = measure_names()
    chosen = measure_names(optional=False) if measures is None else tuple(measures)
    chosen += stability_measures(chosen, lr, batch_sizes)
    unknown = [m for m in chosen if m not in known and m != "loss"]
    if unknown:
        raise LandscapeError(f"unknown measures {unknown}; choose among {['loss', *known]}.")
    total = GRADIENT_BUDGETS[budget] if max_gradients is None else max_gradients
    if total is not None:
        check_positive("max_gradients", total)
    say = log or (lambda _line: None)
    names = [m for m in known if m in chosen]  # the registry's order: later ones reuse results
    say(budget_text(total, budget))
    t0 = time.perf_counter()
    meter = probe.meter()
    out, loss = base_measures(probe)
    gradient_seconds, cpu_seconds = timed_gradient(probe)  # once the probe is warm: the unit
    if total is not None and timing_means_something(probe, gradient_seconds, cpu_seconds):
        # a one-off pause (garbage collection, page faults) must not decide the plan: the
        # faster of two gradients (a second one only where the first was long enough to time)
        again = timed_gradient(probe)
        gradient_seconds, cpu_seconds = min(gradient_seconds, again[0]), min(cpu_seconds, again[1])
    units = UnitCosts() if total is None else calibrate(
        probe, gradient_seconds, any(REGISTRY[n].cost(REGISTRY[n].settings(EFFORT[budget], seed))
                                     .get("n_hvp") for n in names), cpu_seconds)
    setup = {k: getattr(meter.cost(), k) for k in ("n_hvp", "n_gradient", "n_forward")}
    if units.measured:
        setup["gradients"] = round((time.perf_counter() - t0) / gradient_seconds, 1)
    plan, settings = budget_plan(names, budget, seed, total, units, setup)
    say(plan_text(plan))
    context = MeasureContext(probe, progress, loss=loss, has_accuracy="accuracy" in out,
                             options={"lr": lr, "batch_sizes": batch_sizes})
    saved = AuditProgress(resume, audit_key(probe, budget, seed, loss))
    keeper = _Keeper(plan, settings, units, budget, seed, t0, gradient_seconds)
    for key in names:
        if key in saved:
            say(f"{key}: taken from {resume} (measured before with the same settings)")
            out[key] = saved.measure(key, Measure)
            figure = saved.figure_result(key, seed)
            if figure is not None:
                context.results[key] = figure
            continue
        out[key] = keeper.run(key, context, say)
        if out[key].error is None:  # kept on disk at once: an interruption loses nothing of it
            saved.save(key, out[key], context.results.get(key))
    files = {name or Path(checkpoint).name: checkpoint} if checkpoint is not None else None
    info = provenance(probe, seed=seed, budget=budget, data=data_name, checkpoints=files)
    return AuditReport(out, budget, seed, time.perf_counter() - t0, probe.num_params,
                       probe.n_samples, context.results, name=name, data_name=data_name,
                       plan=plan, gradient_seconds=gradient_seconds,
                       spent=spent_counts(keeper.spent, setup, units), provenance=info)


def timed_gradient(probe: Probe) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one full-data gradient."""
    started, cpu_started = time.perf_counter(), time.process_time()
    probe.gradient()
    return time.perf_counter() - started, time.process_time() - cpu_started


class _Keeper:
    """Runs each measure with its planned settings (cut further to the time left when the
    units were measured), counts what it spent with the probe's meter and marks a cut
    measure (`landscape.audit_budget`)."""

    def __init__(self, plan: dict[str, Any], settings: dict[str, dict[str, Any]],
                 units: UnitCosts, budget: str, seed: int, t0: float,
                 gradient_seconds: float) -> None:
        self.plan, self.settings, self.units = plan, settings, units
        self.budget, self.seed, self.t0, self.unit = budget, seed, t0, gradient_seconds
        self.spent: dict[str, dict[str, Any]] = {}
        self.left = [n for n in plan["measures"]]

    def run(self, key: str, context: MeasureContext, say: Callable[[str], None]) -> Measure:
        entry, settings = self.plan["measures"][key], self.settings[key]
        if self.units.measured and self.plan["budget_gradients"] is not None:
            time_left = self.plan["budget_gradients"] - (time.perf_counter() - self.t0) / self.unit
            if time_left <= 0:  # spent: the measure is not run, and says so
                self.left.remove(key)
                self.spent[key] = {}
                self.plan["measures"][key] = {**entry, "n_hvp": 0, "n_gradient": 0,
                                              "n_forward": 0, "gradients": 0, "skipped": True}
                say(f"{key}: not measured, the budget was spent")
                return skipped_measure(key, self.plan)
            units = timed_units(self.units, self.spent, self.unit)
            shares = sum(REGISTRY[n].share for n in self.left)
            cut = refit(key, self.budget, self.seed, entry, time_left, shares, units)
            if cut is not None:
                settings, entry = cut
                self.plan["measures"][key] = {**entry, "planned": self.plan["measures"][key]}
        self.left.remove(key)
        meter = context.probe.meter()
        m = run_measure(REGISTRY[key], context, settings, say)
        self.spent[key] = meter.cost().to_dict()
        if not entry["cut"] or m.error is not None or m.unconverged and not any(m.unconverged):
            return m
        note = budget_note(key, entry, self.plan)
        return replace(m, note=f"{m.note} {note}" if m.note else note)


def audit_plan(names: Sequence[str], budget: str, seed: int = 0) -> dict[str, Any]:
    """The plan of an audit of `names` at `budget` with nominal unit costs (3 gradients a
    product, a third of one a forward pass) and a setup of one evaluation and two gradients:
    what a checkpoint whose gradient takes under `audit_budget.MEASURED_FROM` s (of wall time, or
    of CPU time on a CPU probe) is planned."""
    order = [n for n in measure_names() if n in names]
    return budget_plan(order, budget, seed, GRADIENT_BUDGETS[budget], UnitCosts())[0]


def value_cell(m: Measure, uncertainty: bool = False) -> str:
    """A measure's numbers as a report shows them: every number asked for (all k
    eigenvalues), each that did not reach its tolerance marked `(not converged)`; with
    `uncertainty`, also its standard error or bound and its note (for one-cell views)."""
    if m.error is not None:
        return value_text(m.value, m.error)
    if m.values is not None and len(m.values) > 1 or not m.converged:
        text = marked_values_text(m.values or [m.value], m.unconverged)
        if uncertainty:
            text = with_note(with_note(text, uncertainty_text(m.stderr, m.error_bound)
                                       if m.stderr is not None or m.error_bound is not None
                                       else None), m.note)
        return text
    if uncertainty:
        return value_with_uncertainty(m.value, m.stderr, m.error_bound)
    return value_text(m.value)


def audit_figures(results: dict[str, Any], out: Path, column: str | float = "single",
                  log: bool = True) -> list[Path]:
    """The audit's figures from its raw results: the 1D line, the 2D contour (log-spaced levels
    above the minimum unless `log=False`) and the log-scale spectral density, each where it was
    measured, titled in the one style of `landscape.plot.set_title`."""
    from . import plot

    def titled(ax: Any, title: str) -> Any:
        plot.set_title(ax.figure, title)
        return ax.figure

    drawers = {
        "loss_line": lambda r: titled(plot.plot_line(r, column=column, log=log),
                                      "Loss along a filter-normalized direction"),
        "loss_surface": lambda r: titled(plot.plot_contour(r, column=column, log=log),
                                         "Loss on a filter-normalized plane"),
        "hessian_density": lambda r: titled(plot.plot_density(r, log=True, column=column),
                                            "Hessian eigenvalue density"),
        "batch_spectrum": lambda r: _batch_figure(r, column),
    }
    return save_figures(out, [(key, lambda d=draw, r=results[key]: d(r))
                              for key, draw in drawers.items() if key in results])


def _batch_figure(spectrum: Any, column: str | float) -> Any:
    from .plot_batch import plot_batch_spectrum

    return plot_batch_spectrum(spectrum, column=column).figure


def stability_measures(chosen: Sequence[str], lr: float | None,
                       batch_sizes: Sequence[int] | None) -> tuple[str, ...]:
    """The measures a learning rate (`trace_ratio`) and batch sizes (`batch_spectrum`) add to
    `chosen`, after checking them."""
    from ._checks import check_int, check_positive

    extra = []
    if lr is not None:  # without it, a trace_ratio asked for by name reports why it failed
        check_positive("lr", lr)
        extra.append("trace_ratio")
    if batch_sizes is not None:
        if isinstance(batch_sizes, int) or not len(batch_sizes):
            raise LandscapeError(f"batch_sizes must be a non-empty list of batch sizes; got "
                                 f"{batch_sizes!r}.")
        for m in batch_sizes:
            check_int("each batch size", m)
        extra.append("batch_spectrum")
    return tuple(m for m in extra if m not in chosen)
