"""Finite-difference Hessian-vector products, the fallback of "auto" and its self-check.

Ground truth: exact Hessians of small models, and twins of the test models whose custom
autograd Function is replaced by the differentiable torch op (the same function).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers.models import exact_hessian
from torch import nn
from torch.utils.checkpoint import checkpoint

from landscape import (
    Probe,
    first_order_flatness,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
)
from landscape.hvp_fd import step_length, unit_roundoff


class OnceTanh(torch.autograd.Function):
    """tanh whose backward runs without a graph: double backward silently drops its second
    derivative (no error, a wrong product)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class TanhNet(nn.Module):
    """8 -> 12 -> 3 MLP with tanh (the custom one, or torch.tanh for the differentiable twin);
    `ckpt`: run the hidden layer under activation checkpointing (None, "reentrant", "plain")."""

    def __init__(self, once: bool = True, ckpt: str | None = None, width: int = 12):
        super().__init__()
        self.a = nn.Linear(8, width)
        self.b = nn.Linear(width, width)
        self.c = nn.Linear(width, 3)
        self.once, self.ckpt = once, ckpt

    def act(self, h):
        return OnceTanh.apply(h) if self.once else torch.tanh(h)

    def hidden(self, h):
        return self.act(self.b(h))

    def forward(self, x):
        h = self.act(self.a(x))
        if self.ckpt is None:
            h = self.hidden(h)
        else:
            h = checkpoint(self.hidden, h, use_reentrant=self.ckpt == "reentrant")
        return self.c(h)


def _data(dtype=torch.float32, n=96):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


def _pair(dtype=torch.float32, ckpt=None, once=True):
    """(model under test, differentiable twin with the same weights), both in `dtype`."""
    torch.manual_seed(0)
    model = TanhNet(once=once, ckpt=ckpt).to(dtype)
    twin = TanhNet(once=False).to(dtype)
    twin.load_state_dict(model.state_dict())
    return model, twin


def _rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _quiet_probe(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        probe = Probe(*args, **kwargs)
        probe.hvp(torch.zeros(probe.num_params, dtype=probe.dtype))  # settle "auto"
    return probe


# ---------------------------------------------------------------- the product itself


@pytest.mark.parametrize("scale", [1e-6, 1e-2, 1.0, 1e2, 1e6])
def test_finite_difference_matches_the_exact_product_in_float32_for_any_norm(scale):
    _, twin = _pair()
    x, y = _data()
    exact = Probe(twin, (x, y), hvp_method="double_backward")
    fd = Probe(twin, (x, y), hvp_method="finite_difference")
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(exact.num_params, generator=gen) * scale
        assert _rel(fd.hvp(v), exact.hvp(v)) < 1e-3


def test_step_rule_scales_with_the_vector_and_the_weights():
    u = unit_roundoff(torch.float32)
    assert u == 2.0**-24
    assert step_length(10.0, torch.float32) == pytest.approx(u ** (1 / 3) * 5)
    assert step_length(2.0, torch.float64) == pytest.approx((2.0**-53) ** (1 / 3))


def test_finite_difference_costs_two_gradients_and_restores_the_weights_bitwise(snapshot):
    # (the step is not shortened on this small model: no retries)
    model, _ = _pair()
    x, y = _data()
    probe = Probe(model, [(x[:48], y[:48]), (x[48:], y[48:])], hvp_method="finite_difference")
    probe.loss()
    snap = snapshot(model)
    meter = probe.meter()
    probe.hvp(torch.randn(probe.num_params))
    # two gradients of two batches, and the loss at w (one forward pass, for the step's
    # truncation check: `hvp_fd.shorter_step`), kept for the next product at the same w
    assert meter.cost().n_batch_forward == 2 * 2 + 2
    probe.hvp(torch.randn(probe.num_params))
    assert meter.cost().n_batch_forward == 2 * (2 * 2) + 2
    snap.assert_unchanged()


def test_weights_restored_bitwise_when_a_gradient_raises(snapshot):
    model, _ = _pair()
    x, y = _data()
    calls = {"n": 0}

    def batch_loss(m, batch):
        calls["n"] += 1
        if calls["n"] > 4:  # the data checks pass; the product's second pass raises
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    probe = Probe(model, [(x, y)], batch_loss=batch_loss, hvp_method="finite_difference")
    probe.loss()
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        probe.hvp(torch.randn(probe.num_params))
    snap.assert_unchanged()


def test_float32_top_eigenvalues_and_trace_agree_with_the_exact_hessian():
    model, twin = _pair()
    x, y = _data()
    H = exact_hessian(_twin64(twin), x.double(), y)
    truth = torch.linalg.eigvalsh(H).flip(0)[:3].numpy()
    fd = Probe(model, (x, y), hvp_method="finite_difference")
    res = hessian_eigenvalues(fd, k=3)
    np.testing.assert_allclose(res.eigenvalues, truth, rtol=1e-3)
    tr = hessian_trace(fd, method="hutchinson", n_hvp=60, seed=0)
    assert abs(tr.estimate - float(torch.trace(H))) <= 3 * tr.stderr


def _twin64(twin):
    m = TanhNet(once=False).double()
    m.load_state_dict({k: v.double() for k, v in twin.state_dict().items()})
    return m


# ---------------------------------------------------------------- "auto": fallback and check


@pytest.mark.slow
def test_once_differentiable_model_gets_its_exact_top_eigenvalue_with_the_defaults():
    model, twin = _pair()
    x, y = _data()
    H = exact_hessian(_twin64(twin), x.double(), y)
    truth = float(torch.linalg.eigvalsh(H)[-1])
    probe = Probe(model, (x, y))
    with pytest.warns(RuntimeWarning, match=r"self-check \(check_hvp\) failed"):
        top = hessian_eigenvalues(probe).eigenvalues[0]
    assert top == pytest.approx(truth, rel=1e-3)
    assert probe.hvp_method_used == "finite_difference"
    assert probe.hvp_check.uses_finite_difference and not probe.hvp_check.passed
    # without the check double backward is silently wrong: that is what the check catches
    unchecked = Probe(model, (x, y), check_hvp=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrong = hessian_eigenvalues(unchecked).eigenvalues[0]
    assert not [w for w in caught if "check_hvp" in str(w.message)]
    assert abs(wrong - truth) > 0.05 * truth
    assert unchecked.hvp_check is None


def test_the_check_passes_silently_on_a_differentiable_model():
    _, twin = _pair()
    x, y = _data()
    probe = Probe(twin, (x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe.hvp(torch.randn(probe.num_params))
    assert probe.hvp_check.passed and probe.hvp_method_used != "finite_difference"


def test_the_check_keeps_the_exact_product_where_the_gradient_has_kinks():
    """ReLU: the finite difference crosses kinks (it changes with the step), so the check is
    inconclusive and must not replace a correct exact product."""
    from landscape.data import digits_cnn, digits_tensors

    x, y = digits_tensors("train", image=True)
    probe = Probe(digits_cnn(seed=0), (x[:200], y[:200]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe.hvp(torch.ones(probe.num_params))
    assert probe.hvp_method_used != "finite_difference"
    check = probe.hvp_check
    assert not check.passed and not check.uses_finite_difference
    assert check.step_error > check.difference / 10  # the step-halving error covers it


@pytest.mark.parametrize("mode", ["reentrant", "plain"])
def test_activation_checkpointing(mode):
    model, twin = _pair(ckpt=mode, once=False)
    x, y = _data()
    v = torch.randn(sum(p.numel() for p in twin.parameters()),
                    generator=torch.Generator().manual_seed(0))
    expected = Probe(twin, (x, y), hvp_method="double_backward").hvp(v)
    probe = Probe(model, (x, y))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = probe.hvp(v)
    assert _rel(got, expected) < 1e-3
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if mode == "reentrant":  # no .grad() at all through it: falls back, saying why
        assert probe.hvp_method_used == "finite_difference"
        assert len(messages) == 1 and "double backward is unavailable" in messages[0]
        assert "use_reentrant=True" in messages[0]
        # gradients work too (by backward(), the model's .grad left alone)
        g = probe.gradient()
        torch.testing.assert_close(g, Probe(twin, (x, y)).gradient())
    else:
        assert probe.hvp_method_used != "finite_difference" and not messages


class Attention(nn.Module):
    """One causal self-attention layer through scaled_dot_product_attention, then a head."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, 3)
        self.heads = heads

    def forward(self, x):  # x: (batch, time, d)
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(a.transpose(1, 2).reshape(b, t, d).mean(1))


def _cpu_sdpa_backends():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 1, 4, 8)
    found = []
    for name in ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                nn.functional.scaled_dot_product_attention(q, q, q)
            found.append(name)
        except RuntimeError:
            pass
    return found


@pytest.mark.parametrize("backend", _cpu_sdpa_backends())
@pytest.mark.parametrize("method", ["auto", "finite_difference"])
def test_sdpa_under_each_available_kernel(backend, method):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = Attention()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 5, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=gen)
    with sdpa_kernel([SDPBackend.MATH]):
        expected = Probe(model, (x, y), hvp_method="double_backward").hvp(v)
    with sdpa_kernel([getattr(SDPBackend, backend)]), warnings.catch_warnings():
        warnings.simplefilter("error")
        got = Probe(model, (x, y), hvp_method=method).hvp(v)
    assert _rel(got, expected) < 1e-3


# ---------------------------------------------------------------- every estimator


def _estimates(probe, name):
    if name == "eigenvalues":
        return hessian_eigenvalues(probe, k=2, tol=1e-8).eigenvalues
    if name == "trace":
        return np.array([hessian_trace(probe, method="hutch++", n_hvp=30, seed=1).estimate])
    if name == "density":
        return hessian_density(probe, n_vectors=2, n_steps=12, seed=1).nodes
    if name == "ggn":
        return hessian_eigenvalues(probe, k=2, tol=1e-8, curvature="ggn").eigenvalues
    if name == "flatness":
        return np.array([first_order_flatness(probe, 0.05, steps=4, seed=0).value])
    raise AssertionError(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eigenvalues", "trace", "density", "ggn", "flatness"])
def test_every_estimator_works_through_a_once_differentiable_function(name):
    model, twin = _pair(dtype=torch.float64)
    x, y = _data(torch.float64)
    expected = _estimates(Probe(twin, (x, y)), name)
    probe = _quiet_probe(model, (x, y))
    assert probe.hvp_method_used == "finite_difference"
    np.testing.assert_allclose(_estimates(probe, name), expected, rtol=1e-6, atol=1e-9)
    # the same estimator with the exact product through the custom function is wrong
    wrong = _estimates(Probe(model, (x, y), hvp_method="double_backward"), name)
    assert not np.allclose(wrong, expected, rtol=1e-3)


def test_the_check_does_not_switch_when_only_its_a_priori_bound_is_too_tight(monkeypatch):
    """A finite difference a little less accurate than the a-priori bound (a float64 ViT showed
    3.5e-9 against 2.6e-9) must not replace a correct exact product: the step-halving measures
    its real error."""
    import landscape.hvp_fd

    monkeypatch.setattr(landscape.hvp_fd, "SAFETY", 1e-6)
    _, twin = _pair(dtype=torch.float64)
    x, y = _data(torch.float64)
    probe = Probe(twin, (x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe.hvp(torch.randn(probe.num_params, dtype=torch.float64))
    check = probe.hvp_check
    assert not check.passed and not check.uses_finite_difference
    assert check.difference <= 10 * (check.bound + check.step_error)
