"""Curvature estimators against exact answers: designed quadratics and tiny float64 nets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.models import exact_hessian, tiny_data, tiny_mlp
from helpers.spectra import SPECTRUM, Quadratic, designed, quad_probe  # noqa: F401

from landscape import (
    LandscapeError,
    Probe,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_lanczos_finds_designed_extremes(which, snapshot):
    H, U = designed(SPECTRUM)
    probe = quad_probe(H)
    snap = snapshot(probe.model)
    res = hessian_eigenvalues(probe, k=3, which=which, tol=1e-9, return_vectors=True)
    exact = np.sort(SPECTRUM)[::-1][:3] if which == "largest" else np.sort(SPECTRUM)[:3]
    np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-6)
    assert res.converged and res.n_hvp < len(SPECTRUM)
    assert np.all(res.residuals <= 1e-9 * np.abs(res.eigenvalues))
    # the vectors are eigenvectors, in the order of the values
    Hv = res.eigenvectors @ H
    for lam, v, hv in zip(res.eigenvalues, res.eigenvectors, Hv, strict=True):
        assert torch.linalg.vector_norm(hv - lam * v) < 1e-6 * abs(lam)
    snap.assert_unchanged()


def test_thick_restart_gives_the_same_eigenvalues():
    H, _ = designed(SPECTRUM, seed=3)
    probe = quad_probe(H)
    full = hessian_eigenvalues(probe, k=4, tol=1e-8)
    small = hessian_eigenvalues(probe, k=4, tol=1e-8, max_basis=8)  # forces restarts
    np.testing.assert_allclose(small.eigenvalues, SPECTRUM[:4], rtol=1e-7)
    np.testing.assert_allclose(full.eigenvalues, SPECTRUM[:4], rtol=1e-7)
    assert small.converged and small.n_hvp > 8


def test_power_iteration_baseline_agrees_and_needs_more_products():
    eigs = np.concatenate([[10.0, 9.5], np.linspace(5.0, 0.1, 58)])
    H, _ = designed(eigs, seed=1)
    probe = quad_probe(H)
    power = hessian_eigenvalues(probe, k=2, tol=1e-7, method="power")
    lanczos = hessian_eigenvalues(probe, k=2, tol=1e-7)
    np.testing.assert_allclose(power.eigenvalues, [10.0, 9.5], rtol=1e-6)
    np.testing.assert_allclose(lanczos.eigenvalues, [10.0, 9.5], rtol=1e-10)
    assert power.converged and lanczos.n_hvp * 3 < power.n_hvp


def test_eigenvalues_of_tiny_mlp_match_exact_hessian(snapshot):
    model = tiny_mlp()
    x, y = tiny_data(37)
    probe = Probe(model, (x, y), batch_size=10)
    snap = snapshot(model)
    evals = np.linalg.eigvalsh(exact_hessian(model, x, y).numpy())
    top = hessian_eigenvalues(probe, k=3, tol=1e-10)
    low = hessian_eigenvalues(probe, k=2, which="smallest", tol=1e-10)
    np.testing.assert_allclose(top.eigenvalues, evals[::-1][:3], rtol=1e-6)
    np.testing.assert_allclose(low.eigenvalues, evals[:2], rtol=1e-6)
    assert evals[0] < 0  # an indefinite Hessian: the smallest test has something to find
    snap.assert_unchanged()


def test_ggn_curvature_is_the_gauss_newton_matrix():
    model = tiny_mlp()
    x, y = tiny_data(20)
    probe = Probe(model, (x, y))
    n = probe.num_params
    G = torch.stack([probe.ggn_vp(e) for e in torch.eye(n, dtype=torch.float64)], 1)
    evals = np.linalg.eigvalsh(0.5 * (G + G.T).numpy())
    res = hessian_eigenvalues(probe, k=2, tol=1e-10, curvature="ggn")
    np.testing.assert_allclose(res.eigenvalues, evals[::-1][:2], rtol=1e-6)
    tr = hessian_trace(probe, n_hvp=n, curvature="ggn")
    assert tr.method == "exact" and tr.estimate == pytest.approx(float(G.trace()), rel=1e-10)
    hess = hessian_trace(probe, n_hvp=n)
    assert abs(hess.estimate - tr.estimate) > 1e-6  # the two matrices do differ here


def test_by_layer_and_params_give_hessian_blocks(snapshot):
    model = tiny_mlp()
    x, y = tiny_data(30)
    probe = Probe(model, (x, y))
    snap = snapshot(model)
    H = exact_hessian(model, x, y)
    layers = probe.layers()
    eig = hessian_eigenvalues(probe, k=1, tol=1e-10, by="layer")
    tr = hessian_trace(probe, n_hvp=60, by="layer")
    assert list(eig) == list(layers) == ["0", "2"]
    for name, infos in layers.items():
        idx = torch.cat([torch.arange(i.start, i.stop) for i in infos])
        block = H[idx][:, idx]
        top = np.linalg.eigvalsh(block.numpy())[-1]
        assert eig[name].eigenvalues[0] == pytest.approx(top, rel=1e-6)
        assert tr[name].estimate == pytest.approx(float(block.trace()), rel=1e-9)
        assert eig.sizes[name] == len(idx)
    per_param = hessian_trace(probe, n_hvp=60, by="parameter")
    assert list(per_param) == probe.param_names
    sub = hessian_eigenvalues(probe, params=["2.weight"], tol=1e-10)
    i = probe.param_info[2]
    block = H[i.start:i.stop, i.start:i.stop]
    assert sub.eigenvalues[0] == pytest.approx(np.linalg.eigvalsh(block.numpy())[-1], rel=1e-6)
    json.dumps(eig.to_dict())
    json.dumps(tr.to_dict())
    assert "| 0 |" in tr.to_markdown()
    snap.assert_unchanged()


def test_not_converged_warns_and_says_so():
    H, _ = designed(SPECTRUM)
    probe = quad_probe(H)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = hessian_eigenvalues(probe, k=2, tol=1e-12, max_iter=4)
    assert not res.converged and res.n_hvp == 4


# ---------------------------------------------------------------------------- trace

DECAY = 100.0 * 0.7 ** np.arange(300)  # a decaying spectrum, n = 300


def _spread(method: str, H: torch.Tensor, n_hvp: int, seeds: int = 40):
    probe = quad_probe(H)
    res = [hessian_trace(probe, n_hvp=n_hvp, method=method, seed=s) for s in range(seeds)]
    est = np.array([r.estimate for r in res])
    err = np.array([r.stderr for r in res])
    assert all(r.n_hvp <= n_hvp for r in res)
    return est, err


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_trace_unbiased_and_stderr_honest(method):
    eigs = np.linspace(1.0, 3.0, 300)  # flat-ish: Hutch++'s variance is not zero either
    H, _ = designed(eigs, seed=2)
    est, err = _spread(method, H, n_hvp=30)
    truth = eigs.sum()
    spread = est.std(ddof=1)
    assert abs(est.mean() - truth) < 4 * spread / math.sqrt(len(est))
    ratio = err.mean() / spread
    assert 0.6 < ratio < 1.6, ratio


def test_hutchpp_and_xtrace_beat_hutchinson_on_a_decaying_spectrum():
    H, _ = designed(DECAY, seed=4)
    truth = DECAY.sum()
    spreads = {}
    for method in ("hutchinson", "hutch++", "xtrace"):
        est, err = _spread(method, H, n_hvp=30, seeds=20)
        assert abs(est.mean() - truth) < 5 * est.std(ddof=1) / math.sqrt(len(est)) + 1e-9
        spreads[method] = est.std(ddof=1)
    assert spreads["hutch++"] < 0.2 * spreads["hutchinson"]
    assert spreads["xtrace"] < 0.2 * spreads["hutchinson"]


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_rtol_stops_early(method):
    H, _ = designed(np.linspace(1.0, 2.0, 200), seed=5)
    probe = quad_probe(H)
    res = hessian_trace(probe, n_hvp=150, method=method, rtol=0.02)
    assert res.stopped_early and res.n_hvp < 150
    assert res.stderr <= 0.02 * abs(res.estimate)
    assert res.estimate == pytest.approx(float(H.trace()), rel=0.1)


def test_hutchpp_rtol_is_relative_to_the_whole_estimate():
    # The sketch captures the five large eigenvalues exactly, so the residual's terms scatter
    # around about 0: the stop must compare their stderr with the whole estimate (sketch part
    # included), and only after the minimum number of residual samples.
    eigs = np.concatenate([[1000.0] * 5, np.linspace(-0.01, 0.01, 195)])
    H, _ = designed(eigs, seed=3)
    probe = quad_probe(H)
    res = hessian_trace(probe, n_hvp=150, method="hutch++", rtol=1e-3, seed=0)
    # 50 sketch products, 50 for tr(Q^T H Q) (full rank), then the minimum of 10 residual samples
    assert res.stopped_early and res.n_hvp == 50 + 50 + 10
    assert res.estimate == pytest.approx(float(H.trace()), rel=1e-4)


def test_trace_exact_when_budget_covers_all_parameters():
    model = tiny_mlp()
    x, y = tiny_data(20)
    probe = Probe(model, (x, y))
    res = hessian_trace(probe, n_hvp=probe.num_params, method="xtrace")
    assert res.method == "exact" and res.stderr == 0 and res.n_hvp == probe.num_params
    assert res.estimate == pytest.approx(float(exact_hessian(model, x, y).trace()), rel=1e-10)


# ---------------------------------------------------------------------------- density


def test_density_mass_one_and_mean_is_trace_over_n(snapshot):
    eigs = np.concatenate([np.linspace(-1.0, 1.0, 150), [20.0, 30.0]])
    H, _ = designed(eigs, seed=6)
    probe = quad_probe(H)
    snap = snapshot(probe.model)
    res = hessian_density(probe, n_vectors=8, n_steps=30, seed=1)
    assert np.trapezoid(res.density, res.grid) == pytest.approx(1.0, abs=1e-12)
    assert res.weights.sum() == pytest.approx(1.0, abs=1e-10)
    assert len(res.nodes) == len(res.weights) == 8 * 30 and res.n_hvp == 8 * 30
    mean = eigs.mean()
    assert abs(res.mean - mean) < 4 * res.mean_stderr
    assert float(np.sum(res.weights * res.nodes)) == pytest.approx(res.mean, rel=1e-10)
    assert res.nodes.max() == pytest.approx(30.0, rel=1e-8)  # extremes converge first
    json.dumps(res.to_dict())
    snap.assert_unchanged()


def test_density_full_krylov_space_recovers_the_spectrum():
    eigs = np.array([-2.0, 0.5, 1.0, 3.0, 7.0])
    H, U = designed(eigs, seed=7)
    probe = quad_probe(H)
    res = hessian_density(probe, n_vectors=1, n_steps=50, sigma=0.05, grid=np.linspace(-4, 9, 2001))
    np.testing.assert_allclose(np.sort(res.nodes), eigs, atol=1e-8)
    assert res.n_steps == 5 and res.n_hvp == 5
    # the weights are the squared components of the (normalized) start vector in the eigenbasis
    z = torch.randint(0, 2, (5,), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    expected = ((U.T @ z) ** 2 / 5).numpy()
    np.testing.assert_allclose(res.weights[np.argsort(res.nodes)], expected, atol=1e-8)
    peak = res.grid[np.argmax(res.density)]
    assert abs(peak - eigs[np.argmax(expected)]) < 0.01


# ---------------------------------------------------------------------------- conformance


def test_fixed_seed_reproduces_and_seeds_differ():
    model = tiny_mlp()
    x, y = tiny_data(20)
    probe = Probe(model, (x, y))
    a = hessian_trace(probe, n_hvp=20, method="hutchinson", seed=3)
    b = hessian_trace(probe, n_hvp=20, method="hutchinson", seed=3)
    c = hessian_trace(probe, n_hvp=20, method="hutchinson", seed=4)
    assert a.estimate == b.estimate != c.estimate
    d1 = hessian_density(probe, n_vectors=2, n_steps=10, seed=3)
    d2 = hessian_density(probe, n_vectors=2, n_steps=10, seed=3)
    np.testing.assert_array_equal(d1.nodes, d2.nodes)
    e1 = hessian_eigenvalues(probe, k=2, tol=1e-3, seed=3)
    e2 = hessian_eigenvalues(probe, k=2, tol=1e-3, seed=3)
    np.testing.assert_array_equal(e1.eigenvalues, e2.eigenvalues)
    assert e1.n_hvp == e2.n_hvp
    json.dumps(e1.to_dict())


def test_torch_global_rng_untouched():
    probe = quad_probe(designed(SPECTRUM)[0])
    state = torch.get_rng_state()
    hessian_trace(probe, n_hvp=10, method="hutch++")
    hessian_eigenvalues(probe, k=1)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: hessian_eigenvalues(p, k=0), "k must be"),
        (lambda p: hessian_eigenvalues(p, k=100), "exceeds the number"),
        (lambda p: hessian_eigenvalues(p, which="top"), "which must be"),
        (lambda p: hessian_eigenvalues(p, tol=-1.0), "tol must be"),
        (lambda p: hessian_eigenvalues(p, method="arnoldi"), "method must be"),
        (lambda p: hessian_eigenvalues(p, method="power", which="smallest"), "largest-magnitude"),
        (lambda p: hessian_eigenvalues(p, curvature="fisher"), "curvature must be"),
        (lambda p: hessian_eigenvalues(p, by="block"), "by must be"),
        (lambda p: hessian_eigenvalues(p, max_basis=2, k=2), "max_basis must be"),
        (lambda p: hessian_eigenvalues(p, params=["nope"]), "no trainable parameter"),
        (lambda p: hessian_trace(p, method="hutch"), "method must be"),
        (lambda p: hessian_trace(p, n_hvp=2, method="hutch++"), "n_hvp must be"),
        (lambda p: hessian_trace(p, method="xtrace", rtol=0.1), "rtol is not available"),
        (lambda p: hessian_trace(p, rtol=0.0), "rtol must be"),
        (lambda p: hessian_trace(p, seed=1.5), "seed must be"),
        (lambda p: hessian_density(p, n_steps=0), "n_steps must be"),
        (lambda p: hessian_density(p, grid=np.array([1.0, 0.0])), "grid must be"),
        (lambda p: hessian_density(p, sigma=0.0), "sigma must be"),
        (lambda p: hessian_trace(object()), "probe must be"),
    ],
)
def test_bad_input_raises(call, match, snapshot):
    model = tiny_mlp()
    x, y = tiny_data(10)
    probe = Probe(model, (x, y))
    snap = snapshot(model)
    with pytest.raises(LandscapeError, match=match):
        call(probe)
    snap.assert_unchanged()


def test_ggn_refused_with_batch_loss():
    probe = quad_probe(designed(SPECTRUM)[0])
    with pytest.raises(LandscapeError, match="not available with batch_loss"):
        hessian_trace(probe, curvature="ggn")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    H, _ = designed(SPECTRUM)
    probe = Probe(Quadratic(H).cuda(), [torch.zeros(1)], batch_loss=lambda m, b: m(b))
    res = hessian_eigenvalues(probe, k=2, tol=1e-9, return_vectors=True)
    np.testing.assert_allclose(res.eigenvalues, SPECTRUM[:2], rtol=1e-6)
    assert res.eigenvectors.device.type == "cuda"
    tr = hessian_trace(probe, n_hvp=30, method="xtrace")
    assert np.isfinite(tr.estimate)
    assert hessian_density(probe, n_vectors=1, n_steps=10).n_hvp == 10


def test_density_default_width_and_single_vector_trace_error():
    """The documented defaults: sigma = 1% of the nodes' spread; with one vector (no spread
    over runs) the trace's standard error is sqrt(2 n v^T H^2 v), from the quadrature's second
    moment sum_j tau_j^2 theta_j^2."""
    H, _ = designed([3.0, 2.0, 1.0, 0.5, -0.5, -1.0])
    r = hessian_density(quad_probe(H), n_vectors=1, n_steps=6, seed=2)
    assert r.sigma == pytest.approx(0.01 * (r.nodes.max() - r.nodes.min()), rel=1e-12)
    second = float((r.weights * r.nodes**2).sum())
    assert math.isfinite(r.trace_stderr)
    assert r.trace_stderr == pytest.approx(math.sqrt(2 * 6 * second), rel=1e-9)

