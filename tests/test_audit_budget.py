"""The audit states its budget in gradients before it runs, splits it over its measures and
keeps to it: no measure spends more products, gradients or forward passes than the plan gives
it (counted by the probe), and a measure cut by the budget says so on the line of its number."""

from __future__ import annotations

import pytest

from landscape import LandscapeError, Probe, audit, audit_budget
from landscape.audit import DEFAULT_MEASURES, GRADIENT_BUDGETS, HVP_GRADIENTS, audit_plan
from landscape.data import digits_mlp, digits_tensors

COUNTS = ("n_hvp", "n_gradient", "n_forward")


def _probe() -> Probe:
    x, y = digits_tensors("train")
    return Probe(digits_mlp(hidden=16, seed=0), (x[:200], y[:200]))


def _kept(report, spent, fits: bool = True) -> None:
    """Every measure spent at most its planned counts, and the whole audit (counted by an
    independent meter) at most the plan's totals, which fit the budget (`fits`)."""
    plan = report.plan
    for name, entry in plan["measures"].items():
        used = report.spent["measures"][name]
        assert all(used[k] <= entry[k] for k in COUNTS), (name, used, entry)
    assert all(getattr(spent, k) <= plan[k] for k in COUNTS), (spent, plan)
    if fits:
        assert plan["gradients"] <= plan["budget_gradients"]


def test_quick_budget_is_stated_first_split_and_kept():
    probe = _probe()
    lines = []
    meter = probe.meter()
    report = audit(probe, budget="quick", log=lines.append)
    spent = meter.cost()
    plan = audit_plan(DEFAULT_MEASURES, "quick")
    assert lines[0].startswith(f"Budget: {GRADIENT_BUDGETS['quick']} gradients of time (quick)")
    assert lines[1].startswith(f"Planned: about {plan['gradients']} gradients of time")
    assert report.plan == plan and f"Planned: about {plan['gradients']}" in report.summary()
    assert plan["budget_gradients"] == GRADIENT_BUDGETS["quick"] <= 200
    # the plan's gradients are its counts at the nominal unit costs (a small model: not timed)
    assert not plan["units_measured"] and plan["hvp_gradients"] == HVP_GRADIENTS
    assert plan["gradients"] == round(plan["n_gradient"] + HVP_GRADIENTS * plan["n_hvp"]
                                      + plan["n_forward"] / 3)
    _kept(report, spent)
    assert report.spent["n_hvp"] == spent.n_hvp and "Spent" in report.summary()
    assert report.to_dict()["plan"]["n_hvp"] == plan["n_hvp"]
    assert report.to_dict()["spent"]["n_gradient"] == spent.n_gradient


def test_a_measure_cut_by_the_budget_is_marked_with_what_to_raise():
    probe = _probe()
    meter = probe.meter()
    report = audit(probe, budget="quick", max_gradients=60,
                   measures=["hessian_eigenvalues", "hessian_trace", "sharpness_worst_l2"])
    _kept(report, meter.cost())
    entry = report.plan["measures"]["hessian_eigenvalues"]
    assert entry["cut"] and entry["value"] < entry["effort"]
    eig = report.measures["hessian_eigenvalues"]
    assert eig.settings["max_iter"] == entry["value"] and eig.details["n_hvp"] <= entry["value"]
    assert not eig.converged and all(eig.unconverged)
    assert "Cut by the audit's budget to eig_max_iter=" in eig.note
    assert "max_gradients=" in eig.note
    # on the line of the number, in the Markdown report
    row = next(r for r in report.to_markdown().splitlines() if "`hessian_eigenvalues`" in r)
    assert "(not converged)" in row and "Cut by the audit's budget" in row
    # a cut measure without a tolerance (a lower bound) carries the note without a mark
    sharp = report.measures["sharpness_worst_l2"]
    if report.plan["measures"]["sharpness_worst_l2"]["cut"]:
        assert "Cut by the audit's budget" in sharp.note and sharp.converged


def test_measured_unit_costs_and_the_time_guard_keep_the_counts(monkeypatch):
    # a model whose gradient takes at least MEASURED_FROM seconds gets timed unit costs: here
    # every model does; the products of the calibration are in the plan's setup
    monkeypatch.setattr(audit_budget, "MEASURED_FROM", 0.0)
    probe = _probe()
    meter = probe.meter()
    report = audit(probe, budget="quick", max_gradients=120,
                   measures=["hessian_eigenvalues", "hessian_trace", "loss_line"])
    # (on a model this small the timed setup is mostly Python overhead and may leave the
    # measures only their minimum settings, which the plan then says exceed the budget)
    _kept(report, meter.cost(), fits=False)
    assert report.plan["units_measured"] and report.plan["setup"]["n_hvp"] == 2
    if report.plan["gradients"] > 120:
        assert "above the budget" in report.summary()


def test_without_a_gradient_budget_every_measure_gets_the_effort():
    report = audit(_probe(), budget="standard", measures=["hessian_trace"])
    entry = report.plan["measures"]["hessian_trace"]
    assert report.plan["budget_gradients"] is None and not entry["cut"]
    assert entry["n_hvp"] == entry["effort"] == 99


def test_max_gradients_must_be_positive():
    with pytest.raises(LandscapeError, match="max_gradients"):
        audit(_probe(), budget="quick", max_gradients=0)


def test_a_measure_after_the_time_is_spent_is_not_run_and_says_so(monkeypatch):
    # timed unit costs on a tiny model: the setup alone takes more than one gradient of time
    monkeypatch.setattr(audit_budget, "MEASURED_FROM", 0.0)
    probe = _probe()
    meter = probe.meter()
    report = audit(probe, budget="quick", max_gradients=1, measures=["hessian_trace"])
    _kept(report, meter.cost(), fits=False)
    trace = report.measures["hessian_trace"]
    assert report.spent["measures"]["hessian_trace"] == {k: 0 for k in COUNTS}
    assert not trace.converged and "Not measured: the audit's budget of 1 gradients" in trace.note
    row = next(r for r in report.to_markdown().splitlines() if "`hessian_trace`" in r)
    assert "(not converged)" in row and "Not measured" in row


def test_parameter_sized_fields_are_never_converted_for_a_report():
    # converting a 124M-element delta to a list took 150 s of a GPT-2 quick audit's 15 min;
    # a meta tensor cannot be converted at all, so converting it raises
    import dataclasses

    import torch

    from landscape import first_order_flatness, sharpness

    probe = _probe()
    huge = torch.empty(10**9, device="meta")
    for r in (sharpness(probe, 0.05, steps=1), first_order_flatness(probe, 0.05, steps=1)):
        out = dataclasses.replace(r, delta=huge).to_dict()
        assert "delta" not in out and out["value"] == r.value


def test_a_small_model_on_a_loaded_machine_is_planned_as_on_a_quiet_one(monkeypatch):
    # on a loaded machine a small model's gradient can take longer than MEASURED_FROM in wall
    # time while its CPU time stays tiny: the plan must not depend on the load (two audits of
    # one checkpoint, by the CLI and the API, are compared in the tests of the CLI)
    import importlib
    import time as real_time
    from types import SimpleNamespace

    audit_module = importlib.import_module("landscape.audit")  # the module, not the function

    ticks = iter(range(10**6))
    slow_clock = SimpleNamespace(perf_counter=lambda: real_time.perf_counter() + next(ticks),
                                 process_time=real_time.process_time)
    monkeypatch.setattr(audit_module, "time", slow_clock)  # each reading a second later
    names = ["hessian_eigenvalues", "hessian_trace"]
    report = audit(_probe(), budget="quick", measures=names)
    assert report.gradient_seconds >= audit_budget.MEASURED_FROM  # the wall time said "large"
    assert not report.plan["units_measured"]
    assert report.plan["measures"] == audit_plan(names, "quick")["measures"]


def test_timing_means_something_only_with_cpu_time_on_a_cpu_probe():
    probe = _probe()
    assert not audit_budget.timing_means_something(probe, 5.0, 0.001)
    assert audit_budget.timing_means_something(probe, 5.0, 5.0)
    assert not audit_budget.timing_means_something(probe, 0.01, 5.0)
    assert audit_budget.timing_means_something(probe, 5.0, None)  # not measured: wall time


def test_cpu_time_counts_per_torch_thread(monkeypatch):
    # a loaded machine: a 1 ms gradient's two threads spin for 0.15 s while waiting for a core
    probe = _probe()
    monkeypatch.setattr(audit_budget.torch, "get_num_threads", lambda: 2)
    assert not audit_budget.timing_means_something(probe, 0.15, 0.15)
    assert audit_budget.timing_means_something(probe, 0.15, 0.3)  # both threads worked
    monkeypatch.setattr(audit_budget.torch, "get_num_threads", lambda: 1)
    assert audit_budget.timing_means_something(probe, 0.15, 0.15)
