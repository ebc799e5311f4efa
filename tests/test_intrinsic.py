"""Intrinsic dimension: a least-squares problem whose solution set has a known dimension."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from landscape import IntrinsicDimResult, LandscapeError, intrinsic_dimension
from landscape.data import digits_cnn, digits_mlp, digits_tensors
from landscape.intrinsic import random_projection

F64 = torch.float64
N_PARAMS, K = 16, 4


def _regression(seed: int = 0):
    """K independent linear constraints X w = y on N_PARAMS weights (rows scaled to norm 4)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(N_PARAMS, K, generator=g, dtype=F64))
    x = q.T * N_PARAMS**0.5
    y = torch.randn(K, 1, generator=g, dtype=F64)
    model = nn.Linear(N_PARAMS, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, N_PARAMS, generator=g, dtype=F64))
    return model, x, y


def _least_squares_minimum(model, x, y, d: int, seed: int) -> float:
    """min over theta of mean (X (w0 + P theta) - y)^2, exactly."""
    p = random_projection(N_PARAMS, d, seed=seed, dtype=F64)
    a = x @ p
    r = y[:, 0] - x @ model.weight.detach()[0]
    theta = torch.linalg.lstsq(a, r).solution
    return float(((a @ theta - r) ** 2).mean())


def _run(model, x, y, dims, seed=0, **kw):
    return intrinsic_dimension(
        model, (x, y), (x, y), dims, epochs=300, lr=0.05, optimizer="sgd", momentum=0.8,
        loss_fn=nn.functional.mse_loss, metric="loss", seed=seed, **kw)


def test_regression_zero_loss_iff_d_at_least_constraints(snapshot):
    model, x, y = _regression()
    snap = snapshot(model)
    dims = [1, 2, 3, 4, 6, 8]
    res = _run(model, x, y, dims, threshold=0.999)
    snap.assert_unchanged()
    assert isinstance(res, IntrinsicDimResult)
    assert res.dims == dims and res.n_params == N_PARAMS and res.accuracy is None
    assert res.baseline_loss < 1e-20 and not res.baseline_given
    for d, loss in zip(dims, res.loss):
        exact = _least_squares_minimum(model, x, y, d, seed=0)
        if d < K:  # K constraints cannot all hold in fewer than K directions
            assert exact > 0.05
            assert loss == pytest.approx(exact, rel=1e-6)
        else:
            assert exact < 1e-20
            assert loss < 1e-12
    assert res.d_int90 == K
    residual = x @ model.weight.detach()[0] - y[:, 0]
    assert res.initial_loss == pytest.approx(float((residual**2).mean()))
    json.dumps(res.to_dict())


def test_fixed_seed_reproduces():
    model, x, y = _regression()
    a = _run(model, x, y, [2, 3], seed=7, baseline=0.0)
    b = _run(model, x, y, [2, 3], seed=7, baseline=0.0)
    c = _run(model, x, y, [2, 3], seed=8, baseline=0.0)
    assert a.loss == b.loss and a.baseline_given and a.baseline_loss is None
    assert a.loss != c.loss


def test_projection_nested_unit_columns():
    for kind in ("dense", "sparse"):
        big = random_projection(400, 150, kind=kind, seed=3)
        small = random_projection(400, 70, kind=kind, seed=3)
        if kind == "sparse":
            big, small = big.to_dense(), small.to_dense()
            density = float((big != 0).double().mean())
            assert density == pytest.approx(1 / 20, rel=0.1)  # 1 / sqrt(n)
        assert torch.equal(big[:, :70], small)
        torch.testing.assert_close(big.norm(dim=0), torch.ones(150))
        assert not torch.equal(big, random_projection(400, 150, kind=kind, seed=4).to_dense()
                               if kind == "sparse" else random_projection(400, 150, seed=4))


@pytest.fixture(scope="module")
def digits_small():
    x, y = digits_tensors("train")
    xt, yt = digits_tensors("test")
    return (x[:300], y[:300]), (xt[:200], yt[:200])


def test_digits_mlp_curve(digits_small, snapshot):
    train, test = digits_small
    model = digits_mlp(hidden=8, seed=0)
    snap = snapshot(model)
    res = intrinsic_dimension(model, train, test, [40, 2], epochs=3, lr=0.05, seed=0,
                              projection="sparse", batch_size=100)
    snap.assert_unchanged()
    assert res.dims == [2, 40] and res.projection == ["sparse", "sparse"]
    assert res.metric == "accuracy" and len(res.accuracy) == 2
    assert res.baseline == res.baseline_accuracy > 0.5
    assert res.target == pytest.approx(0.9 * res.baseline)
    assert res.accuracy[1] > res.accuracy[0]
    assert res.d_int90 in (None, 2, 40)
    json.dumps(res.to_dict())


def test_batchnorm_model_untouched(digits_small, snapshot):
    (x, y), (xt, yt) = digits_small
    model = digits_cnn(channels=2, seed=0).train()
    snap = snapshot(model)
    res = intrinsic_dimension(model, (x[:100].reshape(-1, 1, 8, 8), y[:100]),
                              (xt[:50].reshape(-1, 1, 8, 8), yt[:50]), [5], epochs=1,
                              lr=0.01, baseline=0.5)
    snap.assert_unchanged()
    assert res.projection == ["dense"] and 0 <= res.accuracy[0] <= 1


def test_errors(digits_small):
    train, test = digits_small
    model = digits_mlp(hidden=4)
    with pytest.raises(LandscapeError, match="projection must be one of"):
        intrinsic_dimension(model, train, test, [2], projection="fastfood")
    with pytest.raises(LandscapeError, match="dims must be integers between 1"):
        intrinsic_dimension(model, train, test, [0, 2])
    with pytest.raises(LandscapeError, match="dims must be integers between 1"):
        intrinsic_dimension(model, train, test, [10**6])
    with pytest.raises(LandscapeError, match="threshold"):
        intrinsic_dimension(model, train, test, [2], threshold=1.5)
    m, x, y = _regression()
    with pytest.raises(LandscapeError, match="metric='loss'"):
        intrinsic_dimension(m, (x, y), (x, y), [2], loss_fn=nn.functional.mse_loss)
