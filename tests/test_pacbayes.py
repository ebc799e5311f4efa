"""PAC-Bayes flatness against the quadratic's exact answer E[L(w + u)] - L(w) = tr(S H S) / 2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.models import tiny_data, tiny_mlp
from helpers.quadratics import F64, LAMS, Quadratic, quad_probe, spd

from landscape import LandscapeError, PacBayesResult, Probe, pac_bayes_flatness

W_STAR = torch.tensor([1.0, -2.0, 0.5, 0.3, -1.5, 0.8], dtype=F64)


def quadratic():
    return quad_probe(Quadratic(spd(LAMS, seed=3), W_STAR))


def within(r: PacBayesResult, exact: float, k: float = 4.0) -> bool:
    lo, hi = r.bracket
    return lo - k * r.stderr <= exact <= hi + k * r.stderr


def test_isotropic_sigma_on_a_quadratic_is_sqrt_2_target_over_trace():
    probe = quadratic()
    target = 0.1
    r = pac_bayes_flatness(probe, criterion="loss", target=target, n_samples=100)
    exact = math.sqrt(2 * target / sum(LAMS))  # sigma^2 tr(H) / 2 = target
    assert r.converged and r.bracket[1] / r.bracket[0] <= 1.01
    assert r.value == r.bracket[0] == r.sigma
    assert within(r, exact)
    assert 0 < r.stderr < 0.1 * exact
    assert r.increase <= target and r.increase == pytest.approx(target, rel=0.05)
    assert r.flatness == pytest.approx(1 / r.value**2)
    assert r.base == pytest.approx(0.0, abs=1e-12) and r.criterion == "loss"
    # the KL against the prior centred at 0 (no init): ||w||^2 / (2 sigma^2)
    assert r.kl == pytest.approx(float(W_STAR @ W_STAR) / (2 * r.value**2))
    assert r.distance == pytest.approx(float(W_STAR.norm()))
    m = probe.n_samples
    assert r.bound_term == pytest.approx(math.sqrt((r.kl + math.log(2 * math.sqrt(m) / 0.05))
                                                   / (2 * m)))
    # each evaluated level costs n_samples forward passes, plus one at w
    assert r.cost.n_forward == r.n_eval * 100 + 1 and r.cost.n_gradient == 0


def test_magnitude_noise_on_a_quadratic():
    H = spd(LAMS, seed=3)
    probe = quad_probe(Quadratic(H, W_STAR))
    target, eps = 0.1, 1e-2
    r = pac_bayes_flatness(probe, criterion="loss", target=target, noise="magnitude", eps=eps,
                           n_samples=100, seed=1)
    # E[increase] = (sigma^2 sum_i H_ii w_i^2 + eps^2 tr H) / 2
    hw = float((torch.diagonal(H) * W_STAR**2).sum())
    exact = math.sqrt((2 * target - eps**2 * sum(LAMS)) / hw)
    assert r.converged and within(r, exact)
    assert r.noise == "magnitude" and r.eps == eps
    s2 = r.value**2 * W_STAR**2 + eps**2
    init = torch.full((6,), 0.5, dtype=F64)
    r2 = pac_bayes_flatness(probe, criterion="loss", target=target, noise="magnitude", eps=eps,
                            n_samples=100, seed=1, init=init)
    assert r.kl == pytest.approx(float((W_STAR**2 / (2 * s2)).sum()))
    assert r2.value == r.value  # the init only enters the KL
    assert r2.kl == pytest.approx(float(((W_STAR - init) ** 2 / (2 * s2)).sum()))
    assert r2.distance == pytest.approx(float((W_STAR - init).norm()))


def test_stderr_matches_the_spread_over_seeds():
    probe = quadratic()
    runs = [pac_bayes_flatness(probe, criterion="loss", n_samples=10, seed=s, rtol=1e-3)
            for s in range(30)]
    sigmas = np.array([r.value for r in runs])
    stderrs = np.array([r.stderr for r in runs])
    exact = math.sqrt(2 * 0.1 / sum(LAMS))
    spread = sigmas.std(ddof=1)
    assert 0.6 < stderrs.mean() / spread < 1.6
    assert abs(sigmas.mean() - exact) < 4 * spread / math.sqrt(len(runs))
    incs = np.array([r.increase for r in runs])
    assert np.all(incs <= 0.1)


def test_error_criterion_on_a_classifier(snapshot):
    model = tiny_mlp()
    snap = snapshot(model)
    x, _ = tiny_data(40)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # labels the network gets right: training error 0
    probe = Probe(model, (x, y))
    a = pac_bayes_flatness(probe, n_samples=8, seed=2)
    b = pac_bayes_flatness(probe, n_samples=8, seed=2)
    c = pac_bayes_flatness(probe, n_samples=8, seed=3)
    snap.assert_unchanged()
    assert a.converged and a.criterion == "error"
    assert a.to_dict() | {"cost": None} == b.to_dict() | {"cost": None}
    assert a.value != c.value
    assert a.base == 0.0
    assert 0 <= a.increase <= 0.1
    # the error at the upper end of the bracket, with the same draws, exceeds the target
    lo, hi = a.bracket
    assert 0 < lo < hi <= lo * 1.01
    d = a.to_dict()
    assert "scale" not in d and d["seed"] == 2 and d["settings"]["n_samples"] == 8
    json.dumps(d)


def test_unreachable_target_warns_and_reports_not_converged():
    probe = Probe(tiny_mlp(), tiny_data(20))
    with pytest.warns(UserWarning, match="stays <= target"):
        r = pac_bayes_flatness(probe, target=1.5, n_samples=2)
    assert not r.converged and r.bracket[1] == math.inf and r.stderr is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "criterion='error' needs accuracy"),
    (dict(criterion="mse"), "criterion must be one of"),
    (dict(criterion="loss", noise="laplace"), "noise must be one of"),
    (dict(criterion="loss", target=0.0), "target must be"),
    (dict(criterion="loss", target=float("inf")), "target must be"),
    (dict(criterion="loss", eps=-1.0), "eps must be"),
    (dict(criterion="loss", sigma0=0), "sigma0 must be"),
    (dict(criterion="loss", confidence=1.0), r"confidence must be a number in \(0, 1"),
    (dict(criterion="loss", n_samples=1), "n_samples must be an integer"),
    (dict(criterion="loss", max_iter=1), "max_iter must be an integer"),
    (dict(criterion="loss", init=torch.zeros(3, dtype=F64)), "init has 3 entries"),
    (dict(criterion="loss", noise="magnitude", eps=1.0), "the floor eps=1.0 alone"),
])
def test_bad_input_raises(kwargs, match, snapshot):
    model = Quadratic(spd(LAMS, seed=3), W_STAR)
    snap = snapshot(model)
    with pytest.raises(LandscapeError, match=match):
        pac_bayes_flatness(quad_probe(model), **kwargs)
    snap.assert_unchanged()
