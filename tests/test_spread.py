"""data_spread: a scalar estimator on disjoint random parts of the samples, checked against
exact values per part (dense Hessians of a small float64 model on each part's samples)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.models import exact_hessian, tiny_data, tiny_mlp

from landscape import DataSpread, LandscapeError, Probe, data_spread, hessian_trace
from landscape.spread import partition


def _parts(n_samples, n_splits, seed):
    """The documented assignment: randperm(n) from `seed`, cut as numpy.array_split, sorted."""
    order = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed))
    return [piece.sort().values for piece in torch.tensor_split(order, n_splits)]


def _setup(n=42, batch_size=10):
    model = tiny_mlp()
    x, y = tiny_data(n)
    return model, x, y, Probe(model, (x, y), batch_size=batch_size)


def test_partition_is_disjoint_and_covers_every_sample():
    model, x, y, probe = _setup()
    parts = partition(probe, 4, seed=3)
    assert [p.n_samples for p in parts] == [11, 11, 10, 10]
    weighted = sum(p.n_samples * p.loss() for p in parts) / probe.n_samples
    assert weighted == pytest.approx(probe.loss(), rel=1e-12)
    for part, idx in zip(parts, _parts(42, 4, 3)):
        exact = torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).item()
        assert part.loss() == pytest.approx(exact, rel=1e-12)
    with pytest.raises(LandscapeError, match="n_parts must be an integer in"):
        partition(probe, 43)


def test_top_eigenvalue_per_part_matches_the_dense_hessian_of_that_part():
    model, x, y, probe = _setup()
    spread = data_spread(probe, "top_eigenvalue", n_splits=3, seed=1, tol=1e-10)
    exact = [float(torch.linalg.eigvalsh(exact_hessian(model, x[i], y[i]))[-1])
             for i in _parts(42, 3, 1)]
    np.testing.assert_allclose(spread.values, exact, rtol=1e-7)
    assert spread.n_samples.tolist() == [14, 14, 14]
    assert spread.mean == pytest.approx(np.mean(exact), rel=1e-7)
    assert spread.std == pytest.approx(np.std(exact, ddof=1), rel=1e-6)
    assert spread.stderr == pytest.approx(np.std(exact, ddof=1) / math.sqrt(3), rel=1e-6)
    assert spread.estimator == "top_eigenvalue" and spread.settings == {"tol": 1e-10}
    assert spread.cost.n_hvp > 0 and spread.seed == 1
    # the top eigenvalue is convex in H: on all the data it is at most the weighted mean
    full = float(torch.linalg.eigvalsh(exact_hessian(model, x, y))[-1])
    assert full <= float(spread.values @ spread.n_samples) / 42 + 1e-9


def test_trace_parts_are_exact_and_their_weighted_mean_is_the_full_trace():
    model, x, y, probe = _setup()
    n = probe.num_params
    spread = data_spread(probe, hessian_trace, n_splits=4, seed=2, n_hvp=n)
    exact = [float(torch.trace(exact_hessian(model, x[i], y[i]))) for i in _parts(42, 4, 2)]
    np.testing.assert_allclose(spread.values, exact, rtol=1e-9)
    assert spread.estimator == "hessian_trace"
    np.testing.assert_array_equal(spread.split_stderr, 0.0)  # exact: no estimator noise
    full = float(torch.trace(exact_hessian(model, x, y)))
    assert float(spread.values @ spread.n_samples) / 42 == pytest.approx(full, rel=1e-9)


def test_any_callable_and_the_named_zeroth_and_first_order_measures():
    model, x, y, probe = _setup()
    losses = data_spread(probe, lambda p: p.loss(), n_splits=2, seed=0)
    exact = [torch.nn.functional.cross_entropy(model(x[i]), y[i]).item()
             for i in _parts(42, 2, 0)]
    np.testing.assert_allclose(losses.values, exact, rtol=1e-12)
    sharp = data_spread(probe, "sharpness", n_splits=2, rho=0.01, steps=2)
    flat = data_spread(probe, "flatness", n_splits=2, rho=0.01, steps=2)
    for result in (sharp, flat):
        assert isinstance(result, DataSpread) and np.all(np.isfinite(result.values))
        assert np.all(result.values > 0)
    d = sharp.to_dict()
    assert d["estimator"] == "sharpness" and d["settings"] == {"rho": 0.01, "steps": 2}
    assert len(d["values"]) == 2 and d["cost"]["n_gradient"] > 0
    # the seed reaches the estimator: the same draws on every part as called by hand
    noisy = data_spread(probe, "trace", n_splits=2, seed=5, n_hvp=6, method="hutchinson")
    by_hand = [hessian_trace(p, n_hvp=6, method="hutchinson", seed=5).estimate
               for p in partition(probe, 2, seed=5)]
    np.testing.assert_allclose(noisy.values, by_hand, rtol=1e-12)
    assert np.all(noisy.split_stderr > 0)
    one = data_spread(probe, "trace", n_splits=1, n_hvp=6)
    assert math.isnan(one.std) and math.isnan(one.stderr) and one.to_dict()["std"] is None


def test_bad_estimators_are_refused_with_the_fix():
    _, _, _, probe = _setup()
    with pytest.raises(LandscapeError, match="estimator must be one of"):
        data_spread(probe, "sharpest")
    with pytest.raises(LandscapeError, match="has no scalar"):
        data_spread(probe, lambda p: "no number", n_splits=2)
    with pytest.raises(LandscapeError, match="n_splits must be an integer"):
        data_spread(probe, "trace", n_splits=0)


def test_audit_reports_the_data_spread_of_its_headline_measures_when_asked():
    from landscape import audit
    from landscape.audit import DEFAULT_MEASURES

    assert "top_eigenvalue_data_spread" not in DEFAULT_MEASURES  # optional: quick stays quick
    _, _, _, probe = _setup(n=40)
    report = audit(probe, budget="quick", seed=2,
                   measures=["top_eigenvalue_data_spread", "trace_data_spread"])
    top = report.measures["top_eigenvalue_data_spread"]
    direct = data_spread(probe, "top_eigenvalue", n_splits=4, seed=2, tol=1e-3,
                         max_iter=top.settings["max_iter"])
    np.testing.assert_allclose(top.details["values"], direct.values, rtol=1e-9)
    assert top.value == pytest.approx(direct.std, rel=1e-9)
    assert report.measures["trace_data_spread"].details["n_samples"] == [10, 10, 10, 10]
    assert "top_eigenvalue_data_spread" in report.to_markdown()
