"""Local entropy against the exact Gaussian integral on a quadratic.

For L(w + x) = L(w) + G^T x + x^T H x / 2 (G the gradient at w):
  Phi(w; gamma) = F - (n/2) log(2 pi T / gamma)
                = -L(w)/T - 1/2 sum_i log(1 + lambda_i / gamma) + G^T (H + gamma I)^-1 G / (2T),
  the local Gibbs measure is N(mu, T (H + gamma I)^-1) with mu = -(H + gamma I)^-1 G, and
  E[L(w + x)] - L(w) = G^T mu + (mu^T H mu + T tr(H (H + gamma I)^-1)) / 2.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.models import tiny_data, tiny_mlp
from helpers.quadratics import F64, LAMS, Quadratic, quad_probe, spd

from landscape import LandscapeError, LocalEntropyResult, Probe, local_entropy

H = spd(LAMS, seed=6)
G = torch.tensor([0.3, -0.2, 0.1, 0.4, 0.0, -0.1], dtype=F64)
L_W = 0.5


def probe_off_minimum():
    """w = 0 with gradient G there: L(x) = L_W + G^T x + x^T H x / 2."""
    return quad_probe(Quadratic(H, torch.zeros(6, dtype=F64), g=G, l_star=L_W))


def exact(gamma: float, T: float) -> tuple[float, float, float]:
    """(Phi, local energy E[L] - L(w), the paper's gradient norm gamma ||mu||)."""
    A = H + gamma * torch.eye(6, dtype=F64)
    mu = -torch.linalg.solve(A, G)
    lams = torch.tensor(LAMS, dtype=F64)
    phi = -L_W / T - 0.5 * float(torch.log1p(lams / gamma).sum()) - float(G @ mu) / (2 * T)
    energy = float(G @ mu + 0.5 * (mu @ H @ mu) + 0.5 * T * torch.trace(H @ torch.linalg.inv(A)))
    return phi, energy, gamma * float(mu.norm())


GRID_ERROR = 0.03  # trapezoid in log gamma (4 nodes per decade) and the tail closure


@pytest.mark.slow
@pytest.mark.parametrize("T", [1.0, 0.2])
def test_mala_matches_the_gaussian_integral(T):
    gammas = [0.3, 1.0, 3.0]
    r = local_entropy(probe_off_minimum(), gammas, temperature=T, seed=1)
    assert r.gammas == tuple(gammas) and r.temperature == T and r.loss == pytest.approx(L_W)
    for i, g in enumerate(gammas):
        phi, energy, _ = exact(g, T)
        assert abs(r.value[i] - phi) < 4 * r.stderr[i] + GRID_ERROR, (g, r.value[i], phi)
        assert abs(r.local_energy[i] - energy) < 4 * r.local_energy_stderr[i] + 1e-3
        assert r.entropy[i] == pytest.approx(r.value[i] + 3 * math.log(2 * math.pi * T / g))
        assert r.free_energy_gap[i] == pytest.approx(-T * r.value[i] - L_W)
        assert 0.3 < r.acceptance[i] < 0.85
        assert 0 < r.stderr[i] < 0.2
    # a sharper neighbourhood at larger gamma is seen less: Phi increases with gamma
    assert r.value[0] < r.value[1] < r.value[2]
    # cost: one gradient per chain step, burn-in included, and L(w)
    assert r.cost.n_gradient == len(r.nodes) * (250 + 1) and r.cost.n_forward == 1
    assert set(gammas) <= set(r.nodes) and r.nodes[-1] == 300.0


@pytest.mark.slow
def test_low_temperature_gives_the_mean_and_the_paper_gradient():
    T = 0.01
    r = local_entropy(probe_off_minimum(), [0.5, 2.0], temperature=T, seed=2)
    for i, g in enumerate(r.gammas):
        phi, energy, grad_norm = exact(g, T)
        assert abs(r.value[i] - phi) < 4 * r.stderr[i] + GRID_ERROR
        assert r.gradient_norm[i] == pytest.approx(grad_norm, rel=0.15)
        assert abs(r.local_energy[i] - energy) < 4 * r.local_energy_stderr[i] + 1e-3


@pytest.mark.slow
def test_unadjusted_langevin_with_a_small_step():
    T = 0.5
    r = local_entropy(probe_off_minimum(), [1.0], temperature=T, sampler="langevin",
                      step_size=0.02, n_steps=400, seed=3)
    phi, _, _ = exact(1.0, T)
    assert r.acceptance == (1.0,)
    assert abs(r.value[0] - phi) < 4 * r.stderr[0] + 0.05


@pytest.mark.slow
def test_stderr_matches_the_spread_over_seeds():
    probe = probe_off_minimum()
    runs = [local_entropy(probe, 1.0, temperature=1.0, gamma_max=30.0, n_steps=100,
                          burn_in=30, seed=s) for s in range(12)]
    values = np.array([r.value[0] for r in runs])
    stderrs = np.array([r.stderr[0] for r in runs])
    ratio = stderrs.mean() / values.std(ddof=1)
    assert 0.5 < ratio < 2.0, ratio


def test_classifier_conformance(snapshot):
    model = tiny_mlp()
    snap = snapshot(model)
    probe = Probe(model, tiny_data(20))
    kw = dict(gamma_max=60.0, points_per_decade=1, n_steps=8, burn_in=2, n_batches=2)
    a = local_entropy(probe, [30.0, 10.0], seed=5, **kw)
    b = local_entropy(probe, [10.0, 30.0], seed=5, **kw)
    c = local_entropy(probe, [10.0, 30.0], seed=6, **kw)
    snap.assert_unchanged()
    assert isinstance(a, LocalEntropyResult) and a.gammas == (10.0, 30.0)
    assert a.nodes == (10.0, 30.0, 60.0) and a.cost.n_gradient == 3 * (10 + 1)
    assert a.temperature == pytest.approx(1 / 20)  # None: 1 / n_samples
    assert a.value == b.value and a.value != c.value
    assert all(math.isfinite(v) for v in a.value + a.stderr + a.local_energy)
    rows = a.rows()
    assert [row["gamma"] for row in rows] == [10.0, 30.0] and rows[1]["value"] == a.value[1]
    d = a.to_dict()
    assert d["seed"] == 5 and d["settings"]["n_steps"] == 8 and d["cost"]["n_gradient"] > 0
    json.dumps(d)


@pytest.mark.parametrize("args, kwargs, match", [
    ([-1.0], {}, "gamma must be a positive"),
    ([[]], {}, "gammas is empty"),
    ([[1.0, float("nan")]], {}, "gamma must be a positive"),
    ([1.0], dict(temperature=0.0), "temperature must be"),
    ([1.0], dict(gamma_max=1.0), "gamma_max must exceed the largest gamma"),
    ([1.0], dict(sampler="hmc"), "sampler must be one of"),
    ([1.0], dict(step_size=-0.1), "step_size must be"),
    ([1.0], dict(n_batches=1), "n_batches must be an integer"),
    ([1.0], dict(n_steps=5), "n_steps must be an integer >= 10"),
    ([1.0], dict(points_per_decade=0), "points_per_decade must be"),
    ([1.0], dict(sampler="langevin", step_size=50.0, temperature=1.0), "chain diverged"),
])
def test_bad_input_raises(args, kwargs, match, snapshot):
    model = Quadratic(H, torch.zeros(6, dtype=F64), g=G)
    snap = snapshot(model)
    with pytest.raises(LandscapeError, match=match):
        local_entropy(quad_probe(model), *args, **kwargs)
    snap.assert_unchanged()
