"""The vmap path of surfaces (`batched=True`) against the exact per-point loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import tiny_data, tiny_mlp
from torch import nn

from landscape import LandscapeError, Probe, interpolate, loss_line, loss_surface
from landscape.data import digits_cnn, digits_mlp, digits_tensors


class Counting(nn.Module):
    """Counts forward calls (one per batch in the loop, one per chunk and batch under vmap)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


class NotVmappable(nn.Module):
    """Data-dependent Python control flow: vmap raises, the loop works."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out * 2.0 if out.sum().item() > 1e9 else out


def _bn_cnn() -> nn.Module:
    model = digits_cnn(channels=4, seed=3).double()
    g = torch.Generator().manual_seed(5)
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    return model


def _directions(probe: Probe, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = probe.flat_params()
    return (torch.randn(probe.num_params, generator=g, dtype=probe.dtype) * w.abs() * 0.5,
            torch.randn(probe.num_params, generator=g, dtype=probe.dtype) * w.abs() * 0.5)


@pytest.mark.parametrize("kind", ["mlp", "bn_cnn"])
def test_vmap_surface_equals_loop_in_float64(kind, snapshot):
    x, y = digits_tensors("train", image=kind == "bn_cnn", dtype=torch.float64)
    x, y = x[:150], y[:150]
    inner = digits_mlp(hidden=8).double() if kind == "mlp" else _bn_cnn()
    model = Counting(inner)
    probe = Probe(model, (x, y), batch_size=64)  # 3 batches, the last one short
    probe.loss()
    snap = snapshot(model)
    d1, d2 = _directions(probe)
    xs, ys = np.linspace(-1, 1, 5), np.array([-0.5, 0.25, 1.5])
    loop = loss_surface(probe, d1, d2, xs, ys, batched=False)
    before = model.calls
    vm = loss_surface(probe, d1, d2, xs, ys, batched=True)
    # the 3 batches are merged into one (rebatch); fewer calls than points: vmap did run
    assert model.calls - before < 15
    np.testing.assert_allclose(vm.loss, loop.loss, rtol=1e-6)
    np.testing.assert_allclose(vm.accuracy, loop.accuracy, atol=1e-12)
    assert vm.settings_hash == loop.settings_hash
    assert vm.cost.n_forward == loop.cost.n_forward == 15
    assert vm.cost.n_batch_forward == loop.cost.n_batch_forward == 15
    snap.assert_unchanged()


def test_vmap_interpolation_with_batchnorm_buffers_equals_loop(snapshot):
    x, y = digits_tensors("train", image=True, dtype=torch.float64)
    model = Counting(_bn_cnn())
    other = Counting(digits_cnn(channels=4, seed=9).double())
    probe = Probe(model, (x[:100], y[:100]), batch_size=64)
    probe.loss()
    snap = snapshot(model)
    alphas = np.linspace(-0.5, 1.5, 9)
    before = model.calls
    loop = interpolate(probe, other, alphas, batched=False)
    loop_calls, before = model.calls - before, model.calls
    vm = interpolate(probe, other, alphas, batched=True)
    # one call per point in the loop (the two batches merged); under vmap one for the chunk
    # (and one measuring the activations that size it)
    assert loop_calls == 9 and model.calls - before <= 2
    np.testing.assert_allclose(vm.loss, loop.loss, rtol=1e-6)
    assert vm.barrier == pytest.approx(loop.barrier, rel=1e-6, abs=1e-9)
    snap.assert_unchanged()


def test_vmap_with_max_samples_equals_loop(snapshot):
    model = Counting(tiny_mlp())
    probe = Probe(model, tiny_data(80), batch_size=16)
    probe.loss()
    snap = snapshot(model)
    d1, _ = _directions(probe, seed=2)
    alphas = np.linspace(-2, 2, 7)
    before = model.calls
    loop = loss_line(probe, d1, alphas, max_samples=40, seed=3, batched=False)
    loop_calls, before = model.calls - before, model.calls
    vm = loss_line(probe, d1, alphas, max_samples=40, seed=3, batched=True)
    # 8 subsets: the loop calls the model for every point and batch of each, vmap once per
    # subset's chunk and batch (its first use measures the activations too)
    assert loop_calls >= 7 * 8 and model.calls - before < loop_calls / 2
    np.testing.assert_allclose(vm.loss, loop.loss, rtol=1e-6)
    np.testing.assert_allclose(vm.loss_stderr, loop.loss_stderr, rtol=1e-5, atol=1e-12)
    snap.assert_unchanged()


def test_model_vmap_cannot_handle_falls_back_to_the_loop(snapshot):
    model = NotVmappable(tiny_mlp())
    probe = Probe(model, tiny_data(40), batch_size=16)
    snap = snapshot(model)
    d1, d2 = _directions(probe, seed=4)
    xs, ys = np.linspace(-1, 1, 3), np.linspace(-1, 1, 4)
    loop = loss_surface(probe, d1, d2, xs, ys, batched=False)
    vm = loss_surface(probe, d1, d2, xs, ys, batched=True)
    np.testing.assert_array_equal(vm.loss, loop.loss)  # the loop itself: bitwise
    assert vm.cost.n_forward == 12
    snap.assert_unchanged()


def test_autocast_is_recorded_and_changes_the_hash(snapshot):
    model = digits_mlp(hidden=8)
    x, y = digits_tensors("train")
    probe = Probe(model, (x[:128], y[:128]))
    snap = snapshot(model)
    d1, d2 = _directions(probe, seed=6)
    xs = np.linspace(-1, 1, 3)
    exact = loss_surface(probe, d1, d2, xs, xs)
    approx = loss_surface(probe, d1, d2, xs, xs, autocast=True)
    assert exact.autocast is None and approx.autocast == "bfloat16"
    assert approx.settings_hash != exact.settings_hash
    np.testing.assert_allclose(approx.loss, exact.loss, rtol=0.1)  # bf16: ~3 significant digits
    assert loss_line(probe, d1, xs, autocast=True).autocast == "bfloat16"
    with pytest.raises(LandscapeError, match="batched must be"):
        loss_line(probe, d1, xs, batched="yes")
    with pytest.raises(LandscapeError, match="autocast must be"):
        loss_line(probe, d1, xs, autocast=None)
    snap.assert_unchanged()


def test_autocast_file_is_not_reused_for_exact_values(tmp_path):
    probe = Probe(tiny_mlp(dtype=torch.float32), tiny_data(30, dtype=torch.float32))
    d1, d2 = _directions(probe, seed=7)
    path = tmp_path / "s.npz"
    loss_surface(probe, d1, d2, [0.0, 1.0], [0.0], out=path, autocast=True)
    with pytest.raises(LandscapeError, match="different settings"):
        loss_surface(probe, d1, d2, [0.0, 1.0], [0.0], out=path)
