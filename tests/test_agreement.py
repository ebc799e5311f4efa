"""Quadratic-model agreement: ratio 1 on a quadratic, the exact departure on a quartic.

Quartic toy: L(w) = sum_i (lambda_i w_i^2 / 2 + kappa w_i^4 / 4), minimum at 0, H = diag(lambda).
  worst case l2 (lambda_1 the largest): max over ||w|| <= rho = lambda_1 rho^2 / 2 + kappa rho^4 / 4
  (both sums are largest on the top axis), so ratio_worst = 1 + kappa rho^2 / (2 lambda_1);
  average case N(0, rho^2 I): rho^2 tr(H) / 2 + 3 n kappa rho^4 / 4,
  so ratio_average = 1 + 3 n kappa rho^2 / (2 tr H).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import tiny_data, tiny_mlp
from helpers.quadratics import DUMMY, F64, LAMS, Quadratic, quad_probe, spd
from torch import nn

from landscape import AgreementResult, LandscapeError, Probe, quadratic_agreement

LAM = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=F64)
KAPPA = 2.0


class Quartic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4, dtype=F64))

    def forward(self, batch):
        return (LAM * self.w**2 / 2 + KAPPA * self.w**4 / 4).sum()


def test_quadratic_agrees_at_every_radius():
    H = spd(LAMS, seed=7)
    probe = quad_probe(Quadratic(H, torch.linspace(-1, 1, 6, dtype=F64)))
    rhos = [1.0, 0.01, 0.1]
    r = quadratic_agreement(probe, rhos, top_eigenvalue=4.0, trace=sum(LAMS), n_samples=200)
    assert isinstance(r, AgreementResult) and r.rhos == (0.01, 0.1, 1.0)
    for i, rho in enumerate(r.rhos):
        assert r.predicted_worst[i] == pytest.approx(rho**2 * 4.0 / 2)
        assert r.predicted_average[i] == pytest.approx(rho**2 * sum(LAMS) / 2)
        assert r.ratio_worst[i] == pytest.approx(1.0, rel=1e-5)
        # the average case: exact in expectation, within its Monte Carlo error
        assert abs(r.ratio_average[i] - 1.0) < 4 * r.ratio_average_stderr[i]
        assert r.ratio_average_stderr[i] == pytest.approx(
            r.measured_average_stderr[i] / r.predicted_average[i])  # a given trace: no error
    assert r.departure_worst is None and r.departure_average is None and r.value is None
    assert r.grad_norm == pytest.approx(0.0, abs=1e-12) and r.gradient_term == (0.0, 0.0, 0.0)
    assert r.band == (0.8, 1.25) and r.trace_stderr == 0.0
    # cost: worst case 3 x (20 gradients + 2 forwards), average 3 x (200 + 1), and g at w
    assert r.cost.n_gradient == 3 * 20 + 1 and r.cost.n_forward == 3 * 2 + 3 * 201
    rows = r.rows()
    assert [row["rho"] for row in rows] == [0.01, 0.1, 1.0]
    json.dumps(r.to_dict())


def test_quartic_departs_where_the_fourth_order_term_reaches_the_band():
    probe = quad_probe(Quartic())
    rhos = [0.05, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5]
    tr = float(LAM.sum())
    r = quadratic_agreement(probe, rhos, top_eigenvalue=4.0, trace=tr, trace_stderr=0.01,
                            n_samples=400, seed=3)
    for i, rho in enumerate(rhos):
        assert r.ratio_worst[i] == pytest.approx(1 + KAPPA * rho**2 / (2 * 4.0), rel=1e-4)
        expected = 1 + 3 * 4 * KAPPA * rho**2 / (2 * tr)
        assert abs(r.ratio_average[i] - expected) < 4 * r.ratio_average_stderr[i]
    # worst: 1 + rho^2 / 4 > 1.25 first at rho > 1, i.e. rho = 1.5 on this grid
    assert r.departure_worst == 1.5
    # average: 1 + 3 n kappa rho^2 / (2 tr) = 1 + 3.2 rho^2 > 1.25 from rho = 0.28; the first
    # grid radius clearly (2 stderr) outside is 0.4 (ratio 1.51) or 0.6 (ratio 2.15)
    assert r.departure_average in (0.4, 0.6)
    assert r.value == r.departure_average
    assert r.trace_stderr == 0.01
    # a narrower band departs earlier
    narrow = quadratic_agreement(probe, rhos, top_eigenvalue=4.0, trace=tr, band=(0.9, 1.05),
                                 n_samples=20)
    assert narrow.departure_worst == 0.6  # 1 + rho^2 / 4 > 1.05 from rho > 0.45


def test_curvature_is_computed_when_not_given(monkeypatch):
    """Without top_eigenvalue/trace the curvature estimators are called (stubbed here)."""
    import sys
    import types

    calls = {}

    def hessian_eigenvalues(probe, k=1, *, tol=1e-4, seed=0):
        calls["eig"] = (k, tol, seed)
        return types.SimpleNamespace(eigenvalues=torch.tensor([4.0]))

    def hessian_trace(probe, *, n_hvp=100, method="hutch++", seed=0):
        calls["trace"] = (n_hvp, method, seed)
        return types.SimpleNamespace(estimate=7.5, stderr=0.1)

    stub = types.ModuleType("landscape.curvature")
    stub.hessian_eigenvalues = hessian_eigenvalues
    stub.hessian_trace = hessian_trace
    monkeypatch.setitem(sys.modules, "landscape.curvature", stub)
    probe = quad_probe(Quartic())
    r = quadratic_agreement(probe, [0.1], n_hvp=30, seed=4, n_samples=10)
    assert calls == {"eig": (1, 1e-4, 4), "trace": (30, "hutch++", 4)}
    assert r.top_eigenvalue == 4.0 and r.trace == 7.5 and r.trace_stderr == 0.1
    assert r.settings["curvature_given"] == (False, False)
    stub.hessian_trace = lambda probe, **kw: types.SimpleNamespace(estimate=-1.0, stderr=0.1)
    with pytest.raises(LandscapeError, match="estimated trace is -1 <= 0"):
        quadratic_agreement(probe, [0.1], top_eigenvalue=4.0)


def test_classifier_untouched_and_reproducible(snapshot):
    model = tiny_mlp()
    snap = snapshot(model)
    probe = Probe(model, tiny_data(20))
    kw = dict(top_eigenvalue=5.0, trace=20.0, steps=3, n_samples=4)
    a = quadratic_agreement(probe, [0.01, 0.1], seed=1, **kw)
    b = quadratic_agreement(probe, [0.01, 0.1], seed=1, **kw)
    snap.assert_unchanged()
    assert a.measured_average == b.measured_average and a.measured_worst == b.measured_worst
    assert a.grad_norm > 0 and a.gradient_term[1] == pytest.approx(0.1 * a.grad_norm)
    assert a.to_dict()["seed"] == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(rhos=-1.0), "rho must be a positive"),
    (dict(top_eigenvalue=-2.0), "top_eigenvalue must be a positive"),
    (dict(trace=0.0), "trace must be a positive"),
    (dict(trace_stderr=0.1), "trace_stderr needs trace"),
    (dict(trace=1.0, trace_stderr=-0.1), "trace_stderr must be"),
    (dict(band=(1.1, 1.25)), "band must satisfy"),
    (dict(band=0.8), "band must be a pair"),
    (dict(n_hvp=0), "n_hvp must be an integer"),
])
def test_bad_input_raises(kwargs, match, snapshot):
    model = Quartic()
    snap = snapshot(model)
    kwargs = {"rhos": [0.1], "top_eigenvalue": 4.0, **kwargs}
    with pytest.raises(LandscapeError, match=match):
        quadratic_agreement(Probe(model, DUMMY, batch_loss=lambda m, b: m(b)), **kwargs)
    snap.assert_unchanged()


def test_a_quadratic_agrees_even_far_out():
    # ratio 1 also far from the origin: the quadratic model is exact for a quadratic
    probe = quad_probe(Quadratic(torch.diag(LAM), torch.zeros(4, dtype=F64)))
    r = quadratic_agreement(probe, [10.0], top_eigenvalue=4.0, trace=float(LAM.sum()),
                            n_samples=50)
    assert r.ratio_worst[0] == pytest.approx(1.0, rel=1e-5)
    assert abs(r.ratio_average[0] - 1) < 4 * r.ratio_average_stderr[0]
    assert r.value is None
