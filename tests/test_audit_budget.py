"""The audit states its budget in gradients before it runs, and keeps to it in products,
gradients and forward passes (the units the plan is made of)."""

from __future__ import annotations

from landscape import Probe, audit
from landscape.audit import DEFAULT_MEASURES, HVP_GRADIENTS, audit_plan
from landscape.data import digits_mlp, digits_tensors


def test_plan_is_stated_first_and_kept():
    x, y = digits_tensors("train")
    probe = Probe(digits_mlp(hidden=16, seed=0), (x[:200], y[:200]))
    lines = []
    meter = probe.meter()
    report = audit(probe, budget="quick", log=lines.append)
    spent = meter.cost()
    plan = audit_plan(DEFAULT_MEASURES, "quick")
    assert lines[0].startswith(f"Planned: about {plan['gradients']} gradients of time")
    assert report.plan == plan and f"Planned: about {plan['gradients']}" in report.summary()
    assert plan["gradients"] == round(plan["n_gradient"] + HVP_GRADIENTS * plan["n_hvp"]
                                      + plan["n_forward"] / 3)
    # kept: no more products or gradients than planned (forward passes: the probe also counts
    # its first-use data checks, two passes, beyond the plan)
    assert spent.n_hvp <= plan["n_hvp"] and spent.n_gradient <= plan["n_gradient"]
    assert report.spent_gradients > 0 and "Spent" in report.summary()
    assert report.to_dict()["plan"]["n_hvp"] == plan["n_hvp"]
