"""Lines, surfaces, interpolation, PCA and resumable storage against exact answers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers.models import tiny_data, tiny_mlp
from torch import nn

from landscape import (
    LandscapeError,
    Probe,
    Surface,
    interpolate,
    loss_line,
    loss_surface,
    pca_directions,
)

_DUMMY = [(torch.zeros(1, dtype=torch.float64),)]  # one "sample": the loss does not use data


class Quadratic(nn.Module):
    """L(w) = L* + 0.5 (w - w*)^T H (w - w*), the parameter starting at w*."""

    def __init__(self, H: torch.Tensor, w_star: torch.Tensor, l_star: float = 0.3):
        super().__init__()
        self.w = nn.Parameter(w_star.clone())
        self.register_buffer("H", H)
        self.register_buffer("w_star", w_star.clone())
        self.l_star = l_star

    def forward(self) -> torch.Tensor:
        v = self.w - self.w_star
        loss = self.l_star + 0.5 * v @ self.H @ v
        return torch.where(v.abs().max() > 50, torch.full_like(loss, float("inf")), loss)


def _quadratic(n: int = 6):
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.linspace(-1.0, 4.0, n, dtype=torch.float64)
    H = q @ torch.diag(lam) @ q.T
    model = Quadratic(H, torch.randn(n, generator=g, dtype=torch.float64))
    probe = Probe(model, _DUMMY, batch_loss=lambda m, _b: m())
    return model, probe, q, lam


def test_line_and_plane_on_quadratic_match_analytic_values_non_square(snapshot):
    model, probe, q, lam = _quadratic()
    snap = snapshot(model)
    alphas = np.linspace(-2, 3, 7)
    line = loss_line(probe, q[:, 4], alphas)
    np.testing.assert_allclose(line.loss, 0.3 + lam[4].item() * alphas**2 / 2, rtol=1e-12)
    assert line.accuracy is None and line.loss_stderr is None
    xs, ys = np.linspace(-1, 1, 5), np.array([-0.5, 0.0, 2.0])
    s = loss_surface(probe, q[:, 1], q[:, 5], xs, ys)
    want = 0.3 + (lam[1].item() * xs[:, None] ** 2 + lam[5].item() * ys[None, :] ** 2) / 2
    assert s.loss.shape == (5, 3)
    np.testing.assert_allclose(s.loss, want, rtol=1e-12)
    assert s.cosine == pytest.approx(0.0, abs=1e-12)
    # non-orthogonal directions: the full quadratic form, loss[i, j] at (xs[i], ys[j])
    d1, d2 = q[:, 0] + q[:, 2], q[:, 3] - 2 * q[:, 2]
    s = loss_surface(probe, d1, d2, xs, ys)
    H = model.H
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            v = a * d1 + b * d2
            assert s.loss[i, j] == pytest.approx(0.3 + 0.5 * float(v @ H @ v), rel=1e-12)
    assert s.cost.n_forward == 15
    snap.assert_unchanged()


def test_non_finite_points_are_nan(snapshot):
    model, probe, q, _ = _quadratic()
    snap = snapshot(model)
    line = loss_line(probe, q[:, 0], [0.0, 10.0, 1e3])
    assert np.isfinite(line.loss[:2]).all() and np.isnan(line.loss[2])
    snap.assert_unchanged()


def test_accuracy_and_model_untouched_on_a_classifier(snapshot):
    model = tiny_mlp()
    model.train()
    x, y = tiny_data(37)
    snap = snapshot(model)
    probe = Probe(model, (x, y), batch_size=10)
    d = torch.randn(probe.num_params, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    s = loss_surface(probe, d, -d, [0.0, 0.5], [0.0, 0.25, 1.0])
    assert s.accuracy.shape == (2, 3)
    ev = probe.evaluate(0.5 * d - 0.25 * d)
    assert s.loss[1, 1] == pytest.approx(ev.loss, rel=1e-12)
    assert s.accuracy[1, 1] == pytest.approx(ev.accuracy)
    snap.assert_unchanged()


def test_max_samples_stderr_matches_spread_over_seeds():
    model = tiny_mlp()
    x, y = tiny_data(400)
    probe = Probe(model, (x, y))
    d = torch.randn(probe.num_params, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1)) * 0.3
    exact = loss_line(probe, d, [0.5]).loss[0]
    est, se = [], []
    for seed in range(40):
        line = loss_line(probe, d, [0.5], max_samples=80, seed=seed)
        est.append(line.loss[0])
        se.append(line.loss_stderr[0])
        assert line.n_samples == 80
    est, se = np.array(est), np.array(se)
    assert abs(est.mean() - exact) < 4 * est.std() / np.sqrt(len(est))
    assert 0.6 < est.std(ddof=1) / np.sqrt(np.mean(se**2)) < 1.6
    with pytest.raises(LandscapeError, match="max_samples must be an integer"):
        loss_line(probe, d, [0.5], max_samples=3)


class Flaky(nn.Module):
    """Wraps a model; its forward raises once `limit` calls have been made."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.limit: int | None = None

    def forward(self, x):
        if self.limit is not None and self.calls >= self.limit:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_interrupted_surface_resumes_and_evaluates_only_missing_points(tmp_path, snapshot, suffix):
    model = Flaky(tiny_mlp())
    x, y = tiny_data(30)
    probe = Probe(model, (x, y))  # one batch: one forward per point
    probe.loss()
    snap = snapshot(model)
    g = torch.Generator().manual_seed(2)
    d1 = torch.randn(probe.num_params, generator=g, dtype=torch.float64)
    d2 = torch.randn(probe.num_params, generator=g, dtype=torch.float64)
    xs, ys = np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)
    reference = loss_surface(probe, d1, d2, xs, ys)
    path = tmp_path / f"surface{suffix}"
    model.limit = model.calls + 5
    with pytest.raises(RuntimeError, match="simulated crash"):
        loss_surface(probe, d1, d2, xs, ys, out=path)
    snap.assert_unchanged()
    partial = Surface.load(path)
    assert not partial.complete and np.isfinite(partial.loss).sum() == 5
    model.limit = None
    before = model.calls
    s = loss_surface(probe, d1, d2, xs, ys, out=path)
    assert model.calls - before == 12 - 5
    np.testing.assert_array_equal(s.loss, reference.loss)
    loaded = Surface.load(path)
    assert loaded.complete
    np.testing.assert_array_equal(loaded.loss, reference.loss)
    np.testing.assert_array_equal(loaded.accuracy, reference.accuracy)
    assert loaded.settings_hash == s.settings_hash
    before = model.calls
    loss_surface(probe, d1, d2, xs, ys, out=path)  # everything done: nothing evaluated
    assert model.calls == before
    with pytest.raises(LandscapeError, match="different settings"):
        loss_surface(probe, d1, d2, xs, np.linspace(-1, 1, 3), out=path)
    with pytest.raises(LandscapeError, match="different settings"):
        loss_surface(probe, d2, d1, xs, ys, out=path)
    snap.assert_unchanged()


def test_storage_errors(tmp_path):
    probe = Probe(tiny_mlp(), tiny_data())
    d = torch.zeros(probe.num_params, dtype=torch.float64)
    with pytest.raises(LandscapeError, match="must end in one of"):
        loss_surface(probe, d, d, [0], [0], out=tmp_path / "s.csv")
    loss_line(probe, d, [0.0, 1.0], out=tmp_path / "line.npz")
    with pytest.raises(LandscapeError, match="not a surface"):
        Surface.load(tmp_path / "line.npz")
    with pytest.raises(LandscapeError, match="does not exist"):
        Surface.load(tmp_path / "missing.h5")
    with pytest.raises(LandscapeError, match="num_params="):
        loss_line(probe, torch.zeros(2, dtype=torch.float64), [0.0])
    with pytest.raises(LandscapeError, match="non-empty"):
        loss_line(probe, d, [])


class Scalar(nn.Module):
    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))


def test_interpolation_barrier_of_double_well_is_one(snapshot):
    model = Scalar(-1.0)
    snap = snapshot(model)
    probe = Probe(model, _DUMMY, batch_loss=lambda m, _b: ((m.w**2 - 1) ** 2).sum())
    line = interpolate(probe, {"w": torch.tensor([1.0], dtype=torch.float64)},
                       np.linspace(-0.25, 1.25, 61))
    assert line.barrier == pytest.approx(1.0, abs=1e-12)
    assert line.barrier_alpha == pytest.approx(0.5)
    assert line.distance == pytest.approx(2.0) and line.cosine == pytest.approx(-1.0)
    assert line.loss[10] == pytest.approx(0.0, abs=1e-12)  # alpha 0
    assert line.error_barrier is None and len(line.loss) == 61
    snap.assert_unchanged()
    # endpoints not in alphas are evaluated anyway
    assert interpolate(probe, Scalar(1.0), [0.5]).barrier == pytest.approx(1.0)


def test_interpolation_endpoints_and_error_barrier(tmp_path, snapshot):
    a, b = tiny_mlp(seed=0), tiny_mlp(seed=1)
    x, y = tiny_data(37)
    snap = snapshot(a)
    torch.save({"state_dict": b.state_dict()}, tmp_path / "b.pt")
    probe = Probe(a, (x, y))
    line = interpolate(probe, tmp_path / "b.pt", np.linspace(0, 1, 11))
    assert line.loss[0] == pytest.approx(probe.loss(), rel=1e-12)
    assert line.loss[-1] == pytest.approx(Probe(b, (x, y)).loss(), rel=1e-12)
    err = 1 - line.accuracy
    gap = err - ((1 - line.alphas) * err[0] + line.alphas * err[-1])
    assert line.error_barrier == pytest.approx(gap.max())
    assert line.error_barrier_alpha == pytest.approx(line.alphas[gap.argmax()])
    assert line.to_dict()["barrier"] == pytest.approx(line.barrier)
    snap.assert_unchanged()


def test_pca_directions_recover_a_planar_trajectory():
    model = tiny_mlp()
    probe = Probe(model, tiny_data())
    n = probe.num_params
    g = torch.Generator().manual_seed(0)
    u, v = torch.linalg.qr(torch.randn(n, 2, generator=g, dtype=torch.float64))[0].T
    w_t = probe.flat_params()
    t = torch.linspace(1, 0, 8, dtype=torch.float64)
    path = [w_t + 3 * s * u + torch.sin(4 * s) * v for s in t]
    states = [{k: p.reshape(model.get_parameter(k).shape) for k, p in
               zip(probe.param_names, torch.split(w, [i.numel for i in probe.param_info]))}
              for w in path]
    pca = pca_directions(probe, states)
    assert pca.explained_variance.sum() == pytest.approx(1.0)
    assert pca.explained_variance[0] >= pca.explained_variance[1] > 0
    d1, d2 = (d.vector for d in pca.directions)
    assert float(d1 @ d2) == pytest.approx(0.0, abs=1e-10) and float(d1.norm()) == pytest.approx(1)
    rows = torch.stack(path) - w_t
    recon = torch.as_tensor(pca.coords) @ torch.stack([d1, d2])
    assert torch.allclose(recon, rows, atol=1e-10)
    np.testing.assert_allclose(pca.coords[-1], 0.0, atol=1e-12)
    with pytest.raises(LandscapeError, match="at least 3"):
        pca_directions(probe, states[:2])


def test_interpolation_endpoints_are_both_losses_with_batchnorm(snapshot):
    from landscape.data import digits_cnn, digits_tensors

    x, y = digits_tensors("train", image=True, dtype=torch.float64)
    x, y = x[:64], y[:64]
    a, b = digits_cnn(seed=0).double(), digits_cnn(seed=1).double()
    with torch.no_grad():  # different BatchNorm statistics, as two trained networks have
        a[1].running_mean.fill_(0.3)
        b[1].running_var.fill_(2.0)
    snap = snapshot(a)
    probe = Probe(a, (x, y))
    line = interpolate(probe, b, [0.0, 0.5, 1.0])
    assert line.loss[0] == pytest.approx(probe.loss(), rel=1e-12)
    assert line.loss[2] == pytest.approx(Probe(b, (x, y)).loss(), rel=1e-12)
    kept = interpolate(probe, b, [0.0, 1.0], buffers="keep")
    assert abs(kept.loss[1] - line.loss[2]) > 1e-3  # A's statistics with B's weights differ
    snap.assert_unchanged()
    with pytest.raises(LandscapeError, match="buffers must be one of"):
        interpolate(probe, b, buffers="average")
    state = {k: v for k, v in b.state_dict().items() if "running" not in k}
    with pytest.raises(LandscapeError, match="lacks the buffers"):
        interpolate(probe, state)


def _dropout_bn_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.BatchNorm1d(6), nn.ReLU(),
                        nn.Linear(6, 3)).double()
    with torch.no_grad():  # stored statistics unlike the data's, as after training elsewhere
        net[2].running_mean.fill_(0.5 * seed - 1.0)
        net[2].running_var.fill_(1.0 + 2.0 * seed)
    return net


def _reestimated_loss(a: nn.Module, b: nn.Module, alpha: float, x, y, stat_batches) -> float:
    """By hand: weights (1 - alpha) w_A + alpha w_B, BatchNorm reset and run over the batches in
    train mode (dropout off), cumulative average, then the eval-mode loss."""
    net = copy.deepcopy(a).eval()
    with torch.no_grad():
        for p, pb in zip(net.parameters(), b.parameters()):
            p.mul_(1 - alpha).add_(pb, alpha=alpha)
        net[2].reset_running_stats()
        net[2].momentum = None
        net[2].train()
        for xb in stat_batches:
            net(xb)
        net.eval()
        return float(nn.functional.cross_entropy(net(x), y))


def test_interpolation_recompute_reestimates_batchnorm_with_dropout_off(snapshot):
    a, b = _dropout_bn_net(0).train(), _dropout_bn_net(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    snap = snapshot(a)
    probe = Probe(a, (x, y), batch_size=10)
    alphas = [0.0, 0.25, 0.5, 1.0]
    line = interpolate(probe, b, alphas, buffers="recompute")
    want = [_reestimated_loss(a, b, al, x, y, x.split(10)) for al in alphas]
    np.testing.assert_allclose(line.loss, want, rtol=1e-10)
    again = interpolate(probe, b, alphas, buffers="recompute")
    np.testing.assert_array_equal(again.loss, line.loss)  # dropout stayed off: deterministic
    stored = interpolate(probe, b, alphas)  # the stored statistics, interpolated
    assert abs(stored.loss[2] - line.loss[2]) > 1e-3  # so the test can tell the two apart
    assert line.cost.n_forward == 2 * len(alphas)  # a re-estimation and an evaluation per point
    other = torch.randn(300, 4, generator=g, dtype=torch.float64) * 2 + 1
    on_other = interpolate(probe, b, alphas, buffers="recompute",
                           bn_data=(other, torch.zeros(300).long()))
    want = [_reestimated_loss(a, b, al, x, y, other.split(256)) for al in alphas]
    np.testing.assert_allclose(on_other.loss, want, rtol=1e-10)
    assert np.abs(on_other.loss - line.loss).max() > 1e-3
    with pytest.raises(LandscapeError, match="bn_data is only used with buffers='recompute'"):
        interpolate(probe, b, alphas, bn_data=other)
    with pytest.raises(LandscapeError, match="bn_data must hold model inputs"):
        interpolate(probe, b, alphas, buffers="recompute", bn_data=[other, None])
    snap.assert_unchanged()
    assert a[2].momentum == 0.1
    net = nn.Sequential(nn.Linear(4, 3)).double()  # no BatchNorm: the same as the other plans
    plain = Probe(net, (x, y), batch_size=10)
    np.testing.assert_array_equal(interpolate(plain, net, alphas, buffers="recompute").loss,
                                  interpolate(plain, net, alphas, buffers="keep").loss)
