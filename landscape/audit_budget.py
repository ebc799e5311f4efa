"""The audit's budget in gradients: stated up front, split over the measures, kept, reported.

A *gradient of time* is the wall time of one full-data gradient on the audited checkpoint. The
quick budget is a number of them (`GRADIENT_BUDGETS["quick"]`, or `audit(max_gradients=...)`
for any budget), spent as follows:

1. **Stated up front.** Before anything runs, the audit says the budget (the first line it
   logs). It then measures the loss, the gradient norm and the time of one gradient (the unit).
2. **Unit costs.** A Hessian-vector product is planned at `HVP_GRADIENTS` (3) gradients and a
   forward pass at `FORWARD_GRADIENTS` (1/3), unless one gradient takes at least
   `MEASURED_FROM` seconds (a model large enough that timing means something; on a CPU probe,
   seconds of this process's CPU time as well as of wall time, so that a small model on a
   loaded machine, whose wall time is mostly waiting, is planned the same on every run): then
   the audit makes its first product up front (the product method's choice and self-check
   happen there) and times a second product and a forward pass, and plans with those times
   (rounded up to a half gradient a product and a tenth a forward pass). What this setup
   spent is deducted.
3. **Split.** Each chosen measure gets the fraction `MeasureSpec.share` of what is left (the
   default measures' shares sum to 0.96; when the chosen ones sum to more than 1, all are
   scaled down to fit), so a measure is planned the same whichever other measures run beside
   it. Each measure's setting that decides its cost (`MeasureSpec.knob`: the
   Lanczos products, the trace's products, the ascent steps, the grid) is the largest, up to
   the budget's effort (`EFFORT`), whose counted cost `n_gradient + hvp n_hvp + forward
   n_forward` fits its share, and never below `MeasureSpec.knob_min`. The plan lists each
   measure's products, gradients and forward passes; a measure given less than the effort is
   *cut*.
4. **Kept.** Every estimator stops at its planned count (Lanczos at `max_iter`, Hutch++ and SLQ
   at exactly their products, the ascents at their steps), so the products and gradients spent
   never exceed the plan's. With measured unit costs, the wall time is also watched: before each
   measure, if the time left (the budget minus the time spent so far) is less than its share of
   what is left, the measure is cut further, with the products timed so far (estimator overhead
   included) as the unit; when no time is left, the measure is not run and says so. A cut
   measure that misses its tolerance says so on the line of the
   number, with what to raise (`budget_note`).
5. **Reported.** `AuditReport.plan` holds the plan, `AuditReport.spent` the products, gradients
   and forward passes counted by the probe per measure and in all, and the summary line says
   both, with the time spent in gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .measures import EFFORT, REGISTRY, Measure
from .probe import Probe

# None: no gradient budget (each measure gets the budget's effort, as before).
GRADIENT_BUDGETS: dict[str, int | None] = {"quick": 200, "standard": None, "thorough": None}
# Nominal unit costs in gradients (docs/guides/large-models.md: a product costs 1.2-4.5
# gradients measured, a forward pass about a third of one).
HVP_GRADIENTS = 3.0
FORWARD_GRADIENTS = 1 / 3
# A gradient at least this long (seconds) makes timing meaningful: unit costs are measured.
MEASURED_FROM = 0.1
COUNTS = ("n_hvp", "n_gradient", "n_forward")


@dataclass(frozen=True)
class UnitCosts:
    """What a product and a forward pass cost, in gradients, for the plan; `measured` says
    whether they were timed on the checkpoint (else the nominal 3 and 1/3)."""

    hvp: float = HVP_GRADIENTS
    forward: float = FORWARD_GRADIENTS
    measured: bool = False

    def gradients(self, cost: Mapping[str, Any]) -> float:
        """Counted cost in gradients: n_gradient + hvp n_hvp + forward n_forward."""
        return (float(cost.get("n_gradient", 0)) + self.hvp * float(cost.get("n_hvp", 0))
                + self.forward * float(cost.get("n_forward", 0)))


def timing_means_something(probe: Probe, gradient_seconds: float,
                           gradient_cpu_seconds: float | None) -> bool:
    """Whether one gradient is long enough to time the unit costs: `MEASURED_FROM` s of wall
    time and, on a CPU probe, of the process's CPU time per torch thread (`time.process_time`,
    all threads, divided by `torch.get_num_threads()`).
    Wall time alone would decide by the machine's load: a 5 ms gradient waiting for a core
    can take 0.1 s of wall time, and two audits of one checkpoint would then plan differently."""
    if gradient_seconds < MEASURED_FROM:
        return False
    cpu_bound = probe.device.type == "cpu" and gradient_cpu_seconds is not None
    # per torch thread: on a loaded machine a thread waiting for a descheduled sibling spins,
    # and a 1 ms gradient then shows about its wall time as CPU time
    threads = max(torch.get_num_threads(), 1)
    return not cpu_bound or gradient_cpu_seconds / threads >= MEASURED_FROM


def calibrate(probe: Probe, gradient_seconds: float, products: bool,
              gradient_cpu_seconds: float | None = None) -> UnitCosts:
    """Unit costs for the plan: measured (a first product, then one product and one forward
    pass timed) when a gradient takes at least `MEASURED_FROM` s (`timing_means_something`:
    wall time, and CPU time `gradient_cpu_seconds` on a CPU probe), else nominal. `products`:
    whether any chosen measure multiplies by the Hessian."""
    if not timing_means_something(probe, gradient_seconds, gradient_cpu_seconds):
        return UnitCosts()
    hvp = HVP_GRADIENTS
    if products:
        v = torch.randn(probe.num_params, generator=torch.Generator().manual_seed(0))
        v = v.to(device=probe.device, dtype=probe.dtype)
        try:
            probe.hvp(v)  # the first product: method choice, kept graph, self-check
            started = time.perf_counter()
            probe.hvp(v)
            hvp = (time.perf_counter() - started) / gradient_seconds
        except Exception:  # noqa: BLE001 - the measures report the failure; plan nominally
            hvp = HVP_GRADIENTS
    started = time.perf_counter()
    probe.loss()
    forward = (time.perf_counter() - started) / gradient_seconds
    return UnitCosts(max(1.0, math.ceil(2 * hvp) / 2), max(0.1, math.ceil(10 * forward) / 10),
                     True)


def fit(name: str, effort: Mapping[str, Any], seed: int, share: float,
        units: UnitCosts) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings of measure `name` for `share` gradients: its knob at the largest value up
    to the effort's whose counted cost fits (never below `knob_min`). Returns the settings and
    the plan's entry (counts, gradients, knob, value, the effort's value, cut)."""
    spec = REGISTRY[name]

    def settings_at(value: int | None) -> dict[str, Any]:
        return spec.settings(dict(effort) if value is None else {**effort, spec.knob: value},
                             seed)

    def cost_at(value: int | None) -> float:
        return units.gradients(spec.cost(settings_at(value)))

    top = None if spec.knob is None else int(effort[spec.knob])
    value = top
    if top is not None and cost_at(top) > share:
        lo, hi = min(spec.knob_min, top), top  # cost_at(lo) may exceed: the floor
        while lo < hi:  # largest value in [lo, hi] whose cost fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost_at(mid) <= share else (lo, mid - 1)
        value = lo
    settings = settings_at(value)
    cost = spec.cost(settings)
    entry = {**{k: int(cost.get(k, 0)) for k in COUNTS},
             "gradients": round(units.gradients(cost), 1), "share": round(share, 1),
             "knob": spec.knob, "value": value, "effort": top,
             "cut": value is not None and value < top}
    return settings, entry


def budget_plan(names: Sequence[str], budget: str, seed: int, total: float | None,
                units: UnitCosts, setup: Mapping[str, Any] | None = None,
                ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The plan of an audit of `names` (in run order) at `budget` with `total` gradients (None:
    no gradient budget, every measure at the effort) after a `setup` that spent
    `setup["gradients"]` (and its counts). Returns the plan and each measure's settings."""
    setup = dict(setup or {"n_hvp": 0, "n_gradient": 2, "n_forward": 1})
    setup.setdefault("gradients", round(units.gradients(setup), 1))
    left = math.inf if total is None else max(0.0, total - setup["gradients"])
    scale = max(1.0, sum(REGISTRY[n].share for n in names))
    settings, entries = {}, {}
    for n in names:
        share = left * REGISTRY[n].share / scale
        settings[n], entries[n] = fit(n, EFFORT[budget], seed, share, units)
    counts = {k: setup.get(k, 0) + sum(e[k] for e in entries.values()) for k in COUNTS}
    gradients = setup["gradients"] + sum(e["gradients"] for e in entries.values())
    plan = {**counts, "gradients": round(gradients), "budget_gradients": total,
            "hvp_gradients": units.hvp, "forward_gradients": units.forward,
            "units_measured": units.measured, "setup": setup, "measures": entries}
    return plan, settings


def refit(name: str, budget: str, seed: int, entry: Mapping[str, Any], time_left: float,
          shares_left: float, units: UnitCosts) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """With measured units, before a measure: when its share of the time left (`time_left`
    gradients, split by share over `shares_left`) is below its planned gradients at the units
    timed so far, the settings cut to fit it, never above the plan (else None)."""
    allowed = max(0.0, time_left) * REGISTRY[name].share / max(shares_left, 1e-12)
    if units.gradients(entry) <= allowed:
        return None
    effort = dict(EFFORT[budget])
    if entry["knob"] is not None:
        effort[entry["knob"]] = entry["value"]
    settings, new = fit(name, effort, seed, min(allowed, entry["share"]), units)
    if new["value"] == entry["value"]:
        return None
    new["cut"] = True
    new["effort"] = entry["effort"]
    new["refit"] = "cut to the time left"
    return settings, new


def timed_units(units: UnitCosts, spent: Mapping[str, Mapping[str, Any]],
                gradient_seconds: float) -> UnitCosts:
    """The units with the product's cost raised to the largest time per product of the
    measures run so far (estimator overhead included), in gradients."""
    hvp = units.hvp
    for cost in spent.values():
        if cost.get("n_hvp"):
            rest = cost.get("n_gradient", 0) + units.forward * cost.get("n_forward", 0)
            per = (cost["seconds"] / gradient_seconds - rest) / cost["n_hvp"]
            hvp = max(hvp, per)
    return UnitCosts(hvp, units.forward, units.measured)


def plan_text(plan: Mapping[str, Any]) -> str:
    """The plan in words: its budget in gradients first."""
    at = "a measured" if plan.get("units_measured") else "about"
    units = (f"{plan['n_hvp']} Hessian-vector products at {at} "
             f"{plan['hvp_gradients']:g} gradients each, {plan['n_gradient']} gradients, "
             f"{plan['n_forward']} forward passes")
    head = f"Planned: about {plan['gradients']} gradients of time ({units})"
    total = plan.get("budget_gradients")
    if total is None:
        return head + "."
    cut = [n for n, e in plan.get("measures", {}).items() if e.get("cut")]
    over = (f"; the chosen measures need at least {plan['gradients']}, above the budget"
            if plan["gradients"] > total else "")
    return (f"{head}, within a budget of {total:g} gradients{over}"
            + (f"; cut by the budget: {', '.join(cut)}." if cut else "."))


def budget_text(total: float | None, budget: str) -> str:
    """The first line an audit logs: its budget, before anything runs."""
    if total is None:
        return f"Budget: {budget} (no limit in gradients; each measure at the {budget} effort)."
    return (f"Budget: {total:g} gradients of time ({budget}), split over the measures; the "
            f"plan follows once one gradient has been timed.")


def budget_note(name: str, entry: Mapping[str, Any], plan: Mapping[str, Any]) -> str:
    """The sentence a cut measure carries: to what its knob was cut and what to raise."""
    why = (entry.get("refit")
           or f"its share: {entry['share']:g} of {plan['budget_gradients']:g} gradients")
    return (f"Cut by the audit's budget to {entry['knob']}={entry['value']} (the effort's "
            f"{entry['effort']}; {why}): raise max_gradients= (--max-gradients) or use a larger "
            f"budget.")


def skipped_measure(name: str, plan: Mapping[str, Any]) -> Measure:
    """A measure not run because the time was spent before it: NaN, marked, and why."""
    return Measure(name, float("nan"), None, REGISTRY[name].description, {}, {},
                   unconverged=[True],
                   note=(f"Not measured: the audit's budget of {plan['budget_gradients']:g} "
                         f"gradients of time was spent before it; raise max_gradients= "
                         f"(--max-gradients) or use a larger budget."))


def spent_counts(measures: Mapping[str, Mapping[str, Any]], setup: Mapping[str, Any],
                 units: UnitCosts) -> dict[str, Any]:
    """What the audit spent, counted by the probe: the setup's and each measure's products,
    gradients and forward passes, their sum, and the sum in gradients at the plan's units."""
    total = {k: int(setup.get(k, 0)) + sum(int(c.get(k, 0)) for c in measures.values())
             for k in COUNTS}
    return {**total, "gradients": round(units.gradients(total), 1),
            "measures": {n: {k: int(c.get(k, 0)) for k in COUNTS} for n, c in measures.items()}}
