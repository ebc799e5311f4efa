"""The measure registry and the report layer: a registered measure reaches audit's report, cost
estimates come before any work, and rows carry notes."""

from __future__ import annotations

import json

import pytest

from landscape import Probe, audit
from landscape.data import digits_mlp, digits_tensors
from landscape.measures import (
    REGISTRY,
    Measure,
    MeasureSpec,
    estimated_cost,
    measure_names,
    register,
)
from landscape.report import Report, Row, Section


@pytest.fixture()
def probe():
    x, y = digits_tensors("train")
    return Probe(digits_mlp(hidden=8, seed=0), (x[:64], y[:64]))


@pytest.fixture()
def weight_norm_measure():
    def run(ctx, settings):
        value = float(sum(p.detach().pow(2).sum() for p in ctx.probe.model.parameters()))
        return Measure("weight_norm_sq", value * settings["scale"], None,
                       REGISTRY["weight_norm_sq"].description, settings, {"n_forward": 0})

    spec = register(MeasureSpec("weight_norm_sq", "Squared weight norm (test).",
                                lambda effort, seed: {"scale": 2.0}, run,
                                lambda s: {"n_forward": 0}, optional=True))
    yield spec
    del REGISTRY["weight_norm_sq"]


def test_a_registered_measure_runs_in_audit_and_reaches_every_page(probe, weight_norm_measure,
                                                                   tmp_path):
    assert "weight_norm_sq" in measure_names(optional=True)
    assert "weight_norm_sq" not in measure_names(optional=False)
    report = audit(probe, budget="quick", measures=["weight_norm_sq"])
    want = 2.0 * float(sum(p.detach().pow(2).sum() for p in probe.model.parameters()))
    assert report.measures["weight_norm_sq"].value == pytest.approx(want)
    assert report.measures["weight_norm_sq"].settings == {"scale": 2.0}
    report.write(tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["measures"]["weight_norm_sq"]
    for page in ("report.md", "report.html"):
        assert "Squared weight norm (test)." in (tmp_path / page).read_text()


def test_default_audit_does_not_run_optional_measures(probe, weight_norm_measure):
    report = audit(probe, budget="quick", measures=None)
    assert "weight_norm_sq" not in report.measures


def test_cost_estimates_scale_with_the_budget():
    quick = estimated_cost(["hessian_trace", "loss_surface", "hessian_density"], "quick")
    thorough = estimated_cost(["hessian_trace", "loss_surface", "hessian_density"], "thorough")
    assert quick["hessian_trace"] == {"n_hvp": 30}
    assert quick["loss_surface"] == {"n_forward": 81}
    assert quick["hessian_density"] == {"n_hvp": 30}
    for name in quick:
        assert all(thorough[name][k] > quick[name][k] for k in quick[name])


def test_settings_are_what_the_estimator_was_given(probe):
    report = audit(probe, budget="quick", seed=4, measures=["hessian_eigenvalues"])
    m = report.measures["hessian_eigenvalues"]
    planned = report.plan["measures"]["hessian_eigenvalues"]["value"]  # the quick budget's
    assert 6 <= planned <= 60
    assert m.settings == {"k": 5, "which": "largest", "tol": 1e-3, "max_iter": planned,
                          "seed": 4}
    assert m.details["n_hvp"] <= planned and m.error_bound == m.details["error_bounds"][0]


def test_row_notes_render_under_the_table_in_markdown_and_html():
    section = Section("Numbers", ("Plain text.",), ("name", "value"),
                      (Row(("`a`", "1")), Row(("`b`", "2"), note="not converged")))
    report = Report("T", "summary", (section,), {"x": 1})
    md = report.to_markdown()
    assert "| `b` | 2 |" in md and "Note on b: not converged" in md
    page = report.to_html()
    assert "<td><code>b</code></td>" in page and "Note on b: not converged" in page
    assert json.loads(report.to_json()) == {"x": 1}

