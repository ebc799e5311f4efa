"""The density's trace (n times its mean) agrees with hessian_trace (issue 19, point 4)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.spectra import designed, quad_probe

from landscape import hessian_density, hessian_trace

# a known spectrum with a trace much smaller than its Frobenius norm (as on trained networks:
# a few large outliers, a bulk of small positive and negative eigenvalues)
SPECTRUM = np.concatenate([[40.0, 25.0, 12.0], np.linspace(-2.0, 1.5, 197)])
EXACT = float(SPECTRUM.sum())


def test_density_trace_agrees_with_the_exact_trace_and_hutchpp():
    H, _ = designed(SPECTRUM, seed=7)
    probe = quad_probe(H)
    dens = hessian_density(probe, n_vectors=20, n_steps=25, seed=3)
    assert dens.trace == pytest.approx(probe.num_params * dens.mean, rel=1e-12)
    assert abs(dens.trace - EXACT) <= 3 * dens.trace_stderr
    hpp = hessian_trace(probe, n_hvp=90, method="hutch++", seed=3)
    combined = math.hypot(dens.trace_stderr, hpp.stderr)
    assert abs(dens.trace - hpp.estimate) <= 3 * combined
    d = json.loads(json.dumps(dens.to_dict()))
    assert d["trace"] == pytest.approx(dens.trace) and d["trace_stderr"] > 0


@pytest.mark.parametrize("max_vectors", [None, 4])  # reorthogonalized, and the recurrence
def test_density_trace_stderr_is_the_spread_over_seeds(max_vectors):
    """trace is unbiased and trace_stderr matches the observed spread (within a factor 1.6)."""
    H, _ = designed(SPECTRUM, seed=8)
    probe = quad_probe(H)
    runs = [hessian_density(probe, n_vectors=4, n_steps=12, seed=s, max_vectors=max_vectors)
            for s in range(60)]
    est = np.array([r.trace for r in runs])
    err = np.array([r.trace_stderr for r in runs])
    observed = est.std(ddof=1)
    assert abs(est.mean() - EXACT) <= 4 * observed / math.sqrt(len(est))
    assert observed / 1.6 <= np.sqrt(np.mean(err**2)) <= 1.6 * observed


def test_one_vector_reports_the_variance_bound():
    """One start vector: trace_stderr = sqrt(2 n v^T H^2 v) estimates sqrt(2 tr(H^2)), an upper
    bound of the single-sample standard deviation (here about equal: the diagonal of a random
    rotation of the spectrum is small)."""
    H, _ = designed(SPECTRUM, seed=9)
    probe = quad_probe(H)
    runs = [hessian_density(probe, n_vectors=1, n_steps=10, seed=s) for s in range(80)]
    est = np.array([r.trace for r in runs])
    bound = math.sqrt(2 * float((SPECTRUM**2).sum()))
    typical = np.sqrt(np.mean([r.trace_stderr**2 for r in runs]))
    assert typical == pytest.approx(bound, rel=0.25)
    assert est.std(ddof=1) <= 1.3 * typical
    assert np.all(np.isfinite([r.trace_stderr for r in runs]))


def test_density_trace_of_a_float32_model_matches_float64():
    """A float32 probe of the same quadratic: n * mean agrees with the float64 one to float32
    accuracy (its reductions are in float64)."""
    H, _ = designed(SPECTRUM, seed=7)
    p64 = quad_probe(H)
    p32 = quad_probe(H)
    p32.model.float()
    p32 = type(p32)(p32.model, [torch.zeros(1)], batch_loss=lambda m, b: m(b))
    d64 = hessian_density(p64, n_vectors=3, n_steps=10, seed=1)
    d32 = hessian_density(p32, n_vectors=3, n_steps=10, seed=1)
    assert d32.trace == pytest.approx(d64.trace, abs=1e-4 * float(np.abs(SPECTRUM).sum()))
