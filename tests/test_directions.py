"""Directions: filter/layer/model normalization, scale invariance, checkpoints, cosine, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import tiny_data, tiny_mlp
from torch import nn

from landscape import (
    Direction,
    LandscapeError,
    Probe,
    direction_from_checkpoint,
    direction_from_vector,
    loss_line,
    random_direction,
)
from landscape.data import digits_cnn


def _cnn_probe():
    model = digits_cnn(channels=4).double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return model, Probe(model, (x, torch.arange(6) % 10))


def test_filter_normalization_matches_filter_norms_and_zeroes_bias_and_bn(snapshot):
    model, probe = _cnn_probe()
    snap = snapshot(model)
    d = random_direction(probe, seed=3)
    parts = probe.unflatten(d.vector)
    params = dict(model.named_parameters())
    n_multi = 0
    for name, part in parts.items():
        w = params[name].detach()
        if w.ndim > 1:
            n_multi += 1
            rows_d = part.reshape(w.shape[0], -1).norm(dim=1)
            rows_w = w.reshape(w.shape[0], -1).norm(dim=1)
            assert torch.allclose(rows_d, rows_w, rtol=1e-9)
        else:
            assert torch.count_nonzero(part) == 0, name
    assert n_multi >= 2
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    snap.assert_unchanged()


def test_layer_and_model_normalization_and_ignore_none():
    model, probe = _cnn_probe()
    w = probe.flat_params()
    params = dict(model.named_parameters())
    d = random_direction(probe, normalization="layer", seed=1)
    for name, part in probe.unflatten(d.vector).items():
        if params[name].ndim > 1:
            assert float(part.norm()) == pytest.approx(float(params[name].detach().norm()),
                                                      rel=1e-9)
    dm = random_direction(probe, normalization="model", seed=1)
    multi = torch.cat([p.detach().reshape(-1) for p in params.values() if p.ndim > 1])
    assert dm.norm == pytest.approx(float(multi.norm()), rel=1e-9)
    # ignore=None with filter normalization: 1-d parameters move with themselves (d = w)
    dn = random_direction(probe, ignore=None, seed=1)
    for info in probe.param_info:
        if info.ndim <= 1:
            assert torch.equal(dn.vector[info.start:info.stop], w[info.start:info.stop])
    raw = random_direction(probe, normalization=None, ignore=None, seed=1)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(raw.vector, torch.randn(probe.num_params, generator=g, dtype=torch.float64))


def test_same_seed_same_direction_and_cosine():
    _, probe = _cnn_probe()
    a, b = random_direction(probe, seed=5), random_direction(probe, seed=5)
    c = random_direction(probe, seed=6)
    assert torch.equal(a.vector, b.vector)
    assert a.cosine(b) == pytest.approx(1.0)
    cos = a.cosine(c)
    va, vc = a.vector, c.vector
    assert cos == pytest.approx(float(va @ vc / (va.norm() * vc.norm())), rel=1e-12)
    assert abs(cos) < 0.9
    assert a.to_dict()["seed"] == 5 and a.to_dict()["normalization"] == "filter"


def test_filter_normalized_line_is_invariant_to_relu_rescaling(snapshot):
    x, y = tiny_data(40)

    def build(scale: float):
        g = torch.Generator().manual_seed(7)
        m = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 3)).double()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
            m[2].weight.mul_(scale)
            m[2].bias.mul_(scale)
            m[4].weight.div_(scale)
        return m

    alphas = np.linspace(-1, 1, 9)
    lines = []
    for scale in (1.0, 10.0):
        model = build(scale)
        snap = snapshot(model)
        probe = Probe(model, (x, y))
        lines.append(loss_line(probe, random_direction(probe, seed=2), alphas).loss)
        snap.assert_unchanged()
        raw = loss_line(probe, random_direction(probe, normalization=None, seed=2), alphas).loss
        lines.append(raw)
    np.testing.assert_allclose(lines[0], lines[2], rtol=1e-9)
    assert not np.allclose(lines[1], lines[3], rtol=1e-3)  # unnormalized curves do change


def test_direction_from_checkpoint_and_vector(tmp_path):
    a, b = tiny_mlp(seed=0), tiny_mlp(seed=1)
    probe = Probe(a, tiny_data())
    want = torch.cat([(pb - pa).detach().reshape(-1)
                      for pa, pb in zip(a.parameters(), b.parameters())])
    for other in (b, b.state_dict()):
        d = direction_from_checkpoint(probe, other)
        assert torch.equal(d.vector, want) and d.source == "checkpoint"
    torch.save(b.state_dict(), tmp_path / "b.pt")
    assert torch.equal(direction_from_checkpoint(probe, tmp_path / "b.pt").vector, want)
    v = torch.arange(probe.num_params, dtype=torch.float32)
    d = direction_from_vector(probe, v, source="eigenvector")
    assert d.vector.dtype == torch.float64 and torch.equal(d.vector, v.double())
    assert isinstance(d, Direction) and d.source == "eigenvector"
    dn = direction_from_vector(probe, v, normalization="filter")
    assert dn.vector.norm() > 0 and not torch.equal(dn.vector, v.double())
    assert torch.equal(v, torch.arange(probe.num_params, dtype=torch.float32))  # input unchanged


def test_bad_input_errors():
    probe = Probe(tiny_mlp(), tiny_data())
    with pytest.raises(LandscapeError, match="normalization must be one of"):
        random_direction(probe, normalization="row")
    with pytest.raises(LandscapeError, match="ignore must be one of"):
        random_direction(probe, ignore="bias")
    with pytest.raises(LandscapeError, match="num_params="):
        direction_from_vector(probe, torch.zeros(3))
    with pytest.raises(LandscapeError, match="lacks the probed parameters"):
        direction_from_checkpoint(probe, {"x": torch.zeros(2)})
    other = tiny_mlp(hidden=7).state_dict()
    with pytest.raises(LandscapeError, match="same architecture"):
        direction_from_checkpoint(probe, other)


def test_line_along_the_top_hessian_eigenvector_has_its_curvature():

    from landscape import hessian_eigenvalues, loss_line

    probe = Probe(tiny_mlp(), tiny_data(30))
    r = hessian_eigenvalues(probe, k=1, tol=1e-10, return_vectors=True)
    d = direction_from_vector(probe, r.eigenvectors[0])
    h = 1e-3
    f = loss_line(probe, d, [-h, 0.0, h]).loss
    second_derivative = (f[0] - 2 * f[1] + f[2]) / h**2
    assert second_derivative == pytest.approx(r.eigenvalues[0], rel=1e-4)
