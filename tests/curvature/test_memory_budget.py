"""Curvature within a memory budget counted in parameter-sized vectors, and the HVP engines'
choices: the same answers as with unlimited memory, and no more vectors than the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import exact_hessian, tiny_data, tiny_mlp
from helpers.spectra import SPECTRUM, designed, quad_probe

from landscape import (
    LandscapeError,
    Probe,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    hvp,
)
from landscape.curvature import _basis
from landscape.curvature._basis import Basis


def test_basis_arithmetic_matches_dense_and_stays_within_capacity(monkeypatch):
    monkeypatch.setattr(_basis, "_COLUMN_BLOCK", 7)  # exercise the column blocks of a restart
    gen = torch.Generator().manual_seed(0)
    n, cap = 50, 11
    dense = torch.randn(cap, n, generator=gen, dtype=torch.float64)
    basis = Basis(n, cap, torch.device("cpu"), torch.float64)
    for i in range(cap):
        basis.set(i, dense[i])
        assert basis.allocated <= cap
    with pytest.raises(IndexError):
        basis.set(cap, dense[0])
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(basis.dots(w, 9), dense[:9] @ w)
    w2 = w.clone()
    basis.subtract(w2, torch.arange(9.0, dtype=torch.float64), 9)
    torch.testing.assert_close(w2, w - torch.arange(9.0, dtype=torch.float64) @ dense[:9])
    coeffs = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(basis.combine(coeffs.T), coeffs.T @ dense[:10])
    basis.transform_in_place(coeffs)
    for i in range(4):
        torch.testing.assert_close(basis.row(i), coeffs[:, i] @ dense[:10])
    torch.testing.assert_close(basis.row(10), dense[10])  # rows past the transform untouched
    assert basis.allocated == cap


@pytest.mark.parametrize("k, max_vectors", [(1, 5), (3, 6), (3, 12), (5, 9)])
def test_lanczos_in_a_small_budget_finds_the_same_eigenvalues(k, max_vectors):
    H, _ = designed(SPECTRUM, seed=2)
    probe = quad_probe(H)
    res = hessian_eigenvalues(probe, k=k, tol=1e-8, max_vectors=max_vectors,
                              return_vectors=True)
    np.testing.assert_allclose(res.eigenvalues, SPECTRUM[:k], rtol=1e-7)
    assert res.converged and res.stored_vectors <= max_vectors
    Hv = res.eigenvectors @ H
    for lam, v, hv in zip(res.eigenvalues, res.eigenvectors, Hv, strict=True):
        assert torch.linalg.vector_norm(hv - lam * v) < 1e-5 * abs(lam)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_top_eigenvalue_without_a_basis_matches_the_exact_hessian(which):
    model = tiny_mlp()
    x, y = tiny_data(37)
    probe = Probe(model, (x, y), batch_size=10)
    evals = np.linalg.eigvalsh(exact_hessian(model, x, y).numpy())
    res = hessian_eigenvalues(probe, k=1, which=which, tol=1e-8, max_vectors=3)
    full = hessian_eigenvalues(probe, k=1, which=which, tol=1e-8)
    want = evals[-1] if which == "largest" else evals[0]
    # two vectors while iterating, three in the second pass that forms the Ritz vector
    assert res.stored_vectors == 3 and full.stored_vectors > 3
    assert res.converged and res.eigenvalues[0] == pytest.approx(want, rel=1e-7)
    assert res.residuals[0] <= 1e-8 * abs(want)
    # the recurrence reaches the tolerance in about as many steps as the full basis; its true
    # residual costs a second pass of as many products
    assert res.n_hvp <= 2 * full.n_hvp + 3


def test_large_models_get_the_bounded_default(monkeypatch):
    """Past 1 GiB of basis (faked here with a tiny limit) the default budget is 12 vectors: a
    restarted basis of 11, for one eigenvalue as for several."""
    monkeypatch.setattr(_basis, "DEFAULT_BYTES", 1000)
    H, _ = designed(SPECTRUM, seed=4)
    probe = quad_probe(H)
    one = hessian_eigenvalues(probe, k=1, tol=1e-8)
    three = hessian_eigenvalues(probe, k=3, tol=1e-8)
    assert one.stored_vectors == three.stored_vectors == _basis.LARGE_MODEL_VECTORS
    np.testing.assert_allclose(three.eigenvalues, SPECTRUM[:3], rtol=1e-7)
    assert one.eigenvalues[0] == pytest.approx(SPECTRUM[0], rel=1e-7)


def test_a_budget_too_small_for_k_is_refused():
    probe = quad_probe(designed(SPECTRUM)[0])
    with pytest.raises(LandscapeError, match="raise max_vectors to at least 6"):
        hessian_eigenvalues(probe, k=3, max_vectors=4)
    with pytest.raises(LandscapeError, match="max_vectors must be"):
        hessian_trace(probe, max_vectors=1)


def test_density_from_the_recurrence_keeps_the_quadrature():
    """Without reorthogonalization the Gauss quadrature still integrates the low moments:
    the mean (v^T H v) exactly and the second moment (v^T H^2 v) to rounding."""
    H, _ = designed(SPECTRUM, seed=5)
    probe = quad_probe(H)
    full = hessian_density(probe, n_vectors=3, n_steps=40, seed=1)
    small = hessian_density(probe, n_vectors=3, n_steps=40, seed=1, max_vectors=4)
    assert full.reorthogonalized and full.stored_vectors == 41
    assert not small.reorthogonalized and small.stored_vectors == 2
    assert small.mean == pytest.approx(full.mean, rel=1e-10)
    second = [float(d.weights @ d.nodes**2) for d in (full, small)]
    assert second[1] == pytest.approx(second[0], rel=1e-8)
    assert small.weights.sum() == pytest.approx(1.0, rel=1e-12)


def test_hutchpp_in_a_small_budget_is_unbiased_and_exact_at_low_rank():
    # rank 4: a sketch of 5 captures H, so the estimate is exact and the stderr ~ 0
    eigs = np.concatenate([[9.0, 7.0, 4.0, 2.0], np.zeros(56)])
    probe = quad_probe(designed(eigs, seed=6)[0])
    res = hessian_trace(probe, n_hvp=30, max_vectors=6)
    assert res.sketch_size == 5 and res.stored_vectors == 6 and res.n_hvp <= 30
    assert res.estimate == pytest.approx(22.0, rel=1e-9) and res.stderr < 1e-8
    # full rank, decaying: estimates over seeds centre on the truth within their stderr
    probe = quad_probe(designed(np.geomspace(10, 0.01, 60), seed=7)[0])
    truth = float(np.geomspace(10, 0.01, 60).sum())
    runs = [hessian_trace(probe, n_hvp=24, max_vectors=4, seed=s) for s in range(40)]
    assert all(r.sketch_size == 3 and r.n_hvp == 24 for r in runs)
    estimates = np.array([r.estimate for r in runs])
    assert abs(estimates.mean() - truth) < 4 * estimates.std() / np.sqrt(len(runs))
    assert np.median([r.stderr for r in runs]) == pytest.approx(estimates.std(), rel=0.5)


def _probe(graph_bytes=None, hvp_method="auto", batch_size=10):
    model = tiny_mlp()
    x, y = tiny_data(90)
    # the self-check (landscape.hvp_choice) is switched off: these tests count the engine's passes
    return Probe(model, (x, y), batch_size=batch_size, hvp_method=hvp_method,
                 graph_bytes=graph_bytes, check_hvp=False)


def test_auto_keeps_the_graph_when_it_fits_and_drops_it_when_not(monkeypatch):
    v = torch.randn(_probe().num_params, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    reference = _probe(hvp_method="double_backward").hvp(v)
    with monkeypatch.context() as m:  # no timing of the uncached methods: a load never decides
        m.setattr(hvp, "MIN_BATCHES_TO_TIME", 10**9)
        kept = _probe()
        torch.testing.assert_close(kept.hvp(v), reference)
    assert kept.hvp_method_used == "cached_graph"
    torch.testing.assert_close(kept.hvp(2 * v), 2 * reference)  # on the kept graph
    # too large: the first product finishes batch by batch, 9 batches >= 8: timed choice
    dropped = _probe(graph_bytes=1)
    torch.testing.assert_close(dropped.hvp(v), reference)
    assert dropped.hvp_method_used in ("double_backward", "forward_over_reverse")
    torch.testing.assert_close(dropped.hvp(v), reference)
    # few batches: double backward without timing
    few = _probe(graph_bytes=1, batch_size=30)
    torch.testing.assert_close(few.hvp(v), reference)
    assert few.hvp_method_used == "double_backward"


def test_auto_first_product_costs_one_pass_over_the_batches():
    """Choosing costs nothing: the first product at the checkpoint does one forward per batch
    (after the first-use data checks), whether the graph is kept or not."""
    for graph_bytes in (None, 1):
        probe = _probe(graph_bytes=graph_bytes, batch_size=30)
        probe.loss()  # the first-use checks
        meter = probe.meter()
        probe.hvp(torch.ones(probe.num_params, dtype=torch.float64))
        assert meter.cost().n_batch_forward == 3


def test_cudnn_is_switched_off_for_recurrent_models_on_cuda_only():
    """cuDNN's RNN backward refuses eval mode and double backward: off for LSTMs on CUDA."""
    from landscape.hvp import cudnn_off_needed

    lstm = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.LSTM(4, 3))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert cudnn_off_needed(lstm, cuda) and not cudnn_off_needed(lstm, cpu)
    assert not cudnn_off_needed(torch.nn.Linear(3, 2), cuda)


def test_rademacher_in_chunks_draws_the_same_signs():
    from landscape._random import rademacher

    n = 2**20 + 5  # two chunks
    got = rademacher((n,), torch.Generator().manual_seed(3), torch.device("cpu"), torch.float32)
    bits = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, bits.float() * 2 - 1)
