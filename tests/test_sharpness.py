"""Sharpness and first-order flatness against exact answers (DESIGN.md, ground truths 2-6, 8)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.models import tiny_data, tiny_mlp
from helpers.quadratics import (  # noqa: F401 - re-exported for older tests
    DUMMY,
    F64,
    LAMS,
    Block,
    Quadratic,
    quad_probe,
    spd,
    trust_region_max,
)
from torch import nn

from landscape import (
    FlatnessResult,
    LandscapeError,
    LayerSharpnessResult,
    Probe,
    SharpnessResult,
    adaptive_sharpness,
    first_order_flatness,
    sharpness,
)
from landscape.sharpness import apgd_checkpoints, scaling

# ------------------------------------------------------------------ worst case, exact answers


@pytest.mark.parametrize("rho", [0.05, 0.3])
def test_worst_l2_at_minimum_is_half_rho2_lambda_max(rho):
    H = spd(LAMS)
    probe = quad_probe(Quadratic(H, torch.linspace(-1, 1, 6, dtype=F64)))
    r = sharpness(probe, rho)
    assert r.value == pytest.approx(rho**2 * 4.0 / 2, rel=1e-6)
    assert r.value <= rho**2 * 4.0 / 2 * (1 + 1e-12)  # a lower bound
    assert r.stderr is None and r.kind == "worst" and r.norm == "l2"
    assert float((r.delta).norm()) <= rho * (1 + 1e-12)
    assert r.perturbed_loss - r.loss == pytest.approx(r.value, abs=1e-15)
    assert r.n_backward == 20 and r.n_forward == 22  # 20 gradients, L(w) and the last iterate


def test_worst_l2_off_minimum_matches_trust_region():
    H = spd(LAMS, seed=1)
    g = torch.tensor([0.3, -0.2, 0.1, 0.4, 0.0, -0.1], dtype=F64)
    probe = quad_probe(Quadratic(H, torch.zeros(6, dtype=F64), g=g, l_star=1.5))
    for rho in (0.1, 0.5):
        exact = trust_region_max(H, g, rho)
        # the gradient-only answer rho ||g|| and the curvature-only one are both smaller
        assert exact > rho * float(g.norm()) and exact > rho**2 * 4.0 / 2
        assert sharpness(probe, rho).value == pytest.approx(exact, rel=1e-6)


def test_worst_linf_with_diagonal_hessian_is_half_rho2_trace():
    h = torch.tensor([3.0, 1.0, 0.5, 0.1], dtype=F64)
    probe = quad_probe(Quadratic(torch.diag(h), torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=F64)))
    rho = 0.2
    r = sharpness(probe, rho, norm="linf")
    assert r.value == pytest.approx(rho**2 * float(h.sum()) / 2, rel=1e-10)
    assert float(r.delta.abs().max()) <= rho * (1 + 1e-12)


def test_adaptive_worst_l2_at_minimum_with_nonzero_w():
    H = spd(LAMS, seed=2)
    w_star = torch.tensor([2.0, -0.5, 1.0, 0.1, -3.0, 0.7], dtype=F64)
    probe = quad_probe(Quadratic(H, w_star))
    C = torch.diag(w_star.abs())
    rho = 0.1
    exact = rho**2 * float(torch.linalg.eigvalsh(C @ H @ C)[-1]) / 2
    assert adaptive_sharpness(probe, rho).value == pytest.approx(exact, rel=1e-6)
    # with eta: C = diag(|w| + eta)
    C = torch.diag(w_star.abs() + 0.01)
    exact = rho**2 * float(torch.linalg.eigvalsh(C @ H @ C)[-1]) / 2
    r = sharpness(probe, rho, adaptive=True, eta=0.01)
    assert r.value == pytest.approx(exact, rel=1e-6) and r.eta == 0.01 and r.adaptive is True


def test_filter_adaptive_uses_filter_norms_and_abs_for_vectors():
    H = spd([5.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.3, 0.2], seed=3)
    w_star = torch.tensor([1.0, 2.0, 2.0, 0.5, 0.5, 0.5, -0.3, 4.0], dtype=F64)
    probe = quad_probe(Quadratic(H, w_star, shapes=[(2, 3), (2,)]))
    c = scaling(probe, "filter")
    r2 = math.sqrt(0.75)  # rows [1, 2, 2] and [0.5, 0.5, 0.5]; then |w| for the vector
    expected = torch.tensor([3.0, 3.0, 3.0, r2, r2, r2, 0.3, 4.0], dtype=F64)
    assert torch.allclose(c, expected)
    C = torch.diag(expected)
    rho = 0.05
    exact = rho**2 * float(torch.linalg.eigvalsh(C @ H @ C)[-1]) / 2
    assert sharpness(probe, rho, adaptive="filter").value == pytest.approx(exact, rel=1e-6)


def test_weights_only_perturbs_parameters_with_two_dimensions():
    H = spd([5.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.3, 0.2], seed=4)
    probe = quad_probe(Quadratic(H, torch.zeros(8, dtype=F64), shapes=[(2, 3), (2,)]))
    rho = 0.1
    exact = rho**2 * float(torch.linalg.eigvalsh(H[:6, :6])[-1]) / 2
    r = sharpness(probe, rho, perturb="weights")
    assert r.value == pytest.approx(exact, rel=1e-6)
    assert torch.all(r.delta[6:] == 0)
    assert sharpness(probe, rho).value > r.value * (1 + 1e-3)  # the full problem is sharper


def test_keskar_box_percentage_of_one_plus_loss():
    h = torch.tensor([3.0, 1.0, 0.5], dtype=F64)
    w_star = torch.tensor([1.0, -2.0, 0.0], dtype=F64)
    probe = quad_probe(Quadratic(torch.diag(h), w_star, l_star=0.25))
    eps = 1e-2
    increase = 0.5 * eps**2 * float((h * (w_star.abs() + 1) ** 2).sum())
    r = sharpness(probe, eps, norm="linf", adaptive="keskar")
    assert r.value == pytest.approx(100 * increase / 1.25, rel=1e-9)
    assert r.perturbed_loss - r.loss == pytest.approx(increase, rel=1e-9)


def test_layer_wise_gives_the_block_maxima():
    H = spd([6.0, 3.0, 2.0, 1.0, 0.5], seed=5)
    probe = quad_probe(Quadratic(H, torch.zeros(5, dtype=F64), shapes=[(3,), (2,)]))
    rho = 0.1
    table = sharpness(probe, rho, by="layer")
    assert isinstance(table, LayerSharpnessResult)
    assert table.layers == ("layer0", "layer1")
    for (lo, hi), value in zip([(0, 3), (3, 5)], table.values, strict=True):
        exact = rho**2 * float(torch.linalg.eigvalsh(H[lo:hi, lo:hi])[-1]) / 2
        assert value == pytest.approx(exact, rel=1e-4)  # block 0 has a small eigengap
    assert torch.all(table.results[0].delta[3:] == 0) and torch.all(table.results[1].delta[:3] == 0)
    rows = table.rows()
    assert [row["layer"] for row in rows] == ["layer0", "layer1"]
    json.dumps(table.to_dict())


def test_m_sharpness_averages_the_per_group_trust_region_maxima():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, dtype=F64, generator=gen)
    y = torch.randn(12, 1, dtype=F64, generator=gen)
    model = nn.Linear(3, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -0.2, 0.1]], dtype=F64))
    probe = Probe(model, (x, y), nn.functional.mse_loss, batch_size=5)
    rho, m = 0.2, 4
    exact = []
    w = model.weight.detach().reshape(-1)
    for s in range(0, 12, m):
        xg, yg = x[s:s + m], y[s:s + m]
        H = 2 * xg.T @ xg / m
        g = 2 * xg.T @ (xg @ w - yg.reshape(-1)) / m
        exact.append(trust_region_max(H, g, rho))
    r = sharpness(probe, rho, m=m)
    assert r.n_groups == 3 and r.m == m
    assert r.value == pytest.approx(sum(exact) / 3, rel=1e-6)
    values = torch.tensor(exact, dtype=F64)
    assert r.stderr == pytest.approx(float(values.std() / math.sqrt(3)), rel=1e-4)
    # one group holding all the data is the plain worst case, at the same cost
    whole, plain = sharpness(probe, rho, m=12), sharpness(probe, rho)
    assert whole.value == pytest.approx(plain.value, rel=1e-9)
    assert (whole.n_forward, whole.n_backward) == (plain.n_forward, plain.n_backward)
    # two groups already have a standard error (the spread of the two increases)
    two = sharpness(probe, rho, m=6)
    assert two.n_groups == 2 and two.stderr is not None and two.stderr > 0


# ------------------------------------------------------------------ average case


def test_average_case_mean_and_honest_stderr():
    H = spd(LAMS, seed=6)
    w_star = torch.tensor([2.0, -0.5, 1.0, 0.1, -3.0, 0.7], dtype=F64)
    probe = quad_probe(Quadratic(H, w_star))
    C = torch.diag(w_star.abs())
    CHC = C @ H @ C
    rho, N = 0.1, 50
    exact = rho**2 * float(torch.trace(CHC)) / 2
    exact_se = rho**2 * math.sqrt(float(torch.trace(CHC @ CHC)) / 2) / math.sqrt(N)
    results = [sharpness(probe, rho, kind="average", adaptive=True, n_samples=N, seed=s)
               for s in range(40)]
    values = torch.tensor([r.value for r in results], dtype=F64)
    stderrs = torch.tensor([r.stderr for r in results], dtype=F64)
    # unbiased: the mean over 40 seeds is within 4 of its own standard errors
    assert abs(float(values.mean()) - exact) < 4 * exact_se / math.sqrt(40)
    # honest: the reported stderr matches the theoretical one and the observed spread
    assert float(stderrs.mean()) == pytest.approx(exact_se, rel=0.15)
    assert float(values.std()) == pytest.approx(exact_se, rel=0.35)
    assert results[0].n_forward == N + 1 and results[0].n_backward == 0
    assert results[0].n_samples == N and results[0].steps is None


# ------------------------------------------------------------------ first-order flatness


def test_first_order_flatness_at_minimum_is_rho2_lambda_max():
    H = spd(LAMS, seed=7)
    probe = quad_probe(Quadratic(H, torch.linspace(-1, 1, 6, dtype=F64)))
    rho = 0.2
    r = first_order_flatness(probe, rho)
    assert isinstance(r, FlatnessResult)
    assert r.value == pytest.approx(rho**2 * 4.0, rel=1e-6)
    assert r.max_grad_norm == pytest.approx(rho * 4.0, rel=1e-6)
    assert r.grad_norm == pytest.approx(0.0, abs=1e-14)
    assert r.n_hvp == 20 and r.n_backward == 20 + 22
    json.dumps(r.to_dict())


def test_zeroth_order_flatness_at_most_first_order():
    model = tiny_mlp()
    probe = Probe(model, tiny_data(30))
    for rho in (0.05, 0.3):
        r0 = sharpness(probe, rho, steps=15)
        r1 = first_order_flatness(probe, rho, steps=15)
        assert 0 < r0.value <= r1.value
        assert r1.max_grad_norm >= r1.grad_norm


# ------------------------------------------------------------------ invariance (Dinh et al.)


class Product(nn.Module):
    """Dinh et al.'s toy L = (a b - 1)^2."""

    def __init__(self, alpha: float):
        super().__init__()
        self.a = Block(torch.tensor([alpha], dtype=F64))
        self.b = Block(torch.tensor([1.0 / alpha], dtype=F64))

    def forward(self, batch):
        return ((self.a.w * self.b.w).sum() - 1) ** 2


def test_dinh_toy_adaptive_constant_plain_growing():
    rho = 0.1
    exact = (math.sqrt(2) * rho + rho**2 / 2) ** 2
    plain = []
    for alpha in (1.0, 10.0, 100.0):
        probe = quad_probe(Product(alpha))
        assert adaptive_sharpness(probe, rho, restarts=4).value == pytest.approx(exact, rel=1e-6)
        plain.append(sharpness(probe, rho, restarts=4).value)
    assert plain[0] < plain[1] < plain[2]
    assert plain[2] > 100 * plain[0]


def relu_mlp(scale: float = 1.0) -> nn.Sequential:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).to(F64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.7)
        model[0].weight.mul_(scale)
        model[0].bias.mul_(scale)
        model[2].weight.div_(scale)
    return model


@pytest.mark.parametrize("adaptive", [True, "filter"])
@pytest.mark.parametrize("kind", ["worst", "average"])
def test_relu_rescaling_leaves_adaptive_sharpness_unchanged(adaptive, kind):
    data = tiny_data(30)
    kw = dict(adaptive=adaptive, kind=kind, steps=10, n_samples=10, seed=3)
    base = sharpness(Probe(relu_mlp(), data), 0.05, **kw).value
    for scale in (10.0, 0.1):
        model = relu_mlp(scale)
        assert sharpness(Probe(model, data), 0.05, **kw).value == pytest.approx(base, rel=1e-7)
    # while plain sharpness changes
    plain = sharpness(Probe(relu_mlp(), data), 0.05, steps=10).value
    plain10 = sharpness(Probe(relu_mlp(10.0), data), 0.05, steps=10).value
    assert abs(plain10 - plain) > 0.1 * plain


# ------------------------------------------------------------------ conformance


def test_model_untouched_seed_reproduces_and_lists(snapshot):
    model = tiny_mlp()
    snap = snapshot(model)
    probe = Probe(model, tiny_data(20))
    a = sharpness(probe, [0.01, 0.1], kind="average", n_samples=5, seed=1)
    b = sharpness(probe, [0.01, 0.1], kind="average", n_samples=5, seed=1)
    c = sharpness(probe, [0.01, 0.1], kind="average", n_samples=5, seed=2)
    assert [r.rho for r in a] == [0.01, 0.1] and all(isinstance(r, SharpnessResult) for r in a)
    assert [r.value for r in a] == [r.value for r in b]
    assert a[1].value != c[1].value
    w1 = sharpness(probe, 0.1, steps=5, seed=4, norm="linf", adaptive="filter")
    w2 = sharpness(probe, 0.1, steps=5, seed=4, norm="linf", adaptive="filter")
    assert w1.value == w2.value and torch.equal(w1.delta, w2.delta)
    sharpness(probe, 0.1, steps=3, m=7, by="layer")
    flats = first_order_flatness(probe, np.array([0.1, 0.2]), steps=3)
    assert [f.rho for f in flats] == [0.1, 0.2]
    snap.assert_unchanged()
    d = a[0].to_dict()
    assert "delta" not in d and d["seed"] == 1 and d["stderr"] > 0
    json.dumps(d)


def test_model_restored_when_the_loss_raises_mid_ascent(snapshot):
    model = Quadratic(spd(LAMS), torch.ones(6, dtype=F64))
    snap = snapshot(model)
    calls = {"n": 0}

    def batch_loss(m, b):
        calls["n"] += 1
        if calls["n"] > 6:
            raise RuntimeError("boom")
        return m(b)

    probe = Probe(model, DUMMY, batch_loss=batch_loss)
    with pytest.raises(RuntimeError, match="boom"):
        sharpness(probe, 0.1)
    snap.assert_unchanged()


def test_apgd_checkpoints():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert all(0 < k < 20 for k in apgd_checkpoints(20))


@pytest.mark.parametrize("kwargs, match", [
    (dict(rho=-0.1), "rho must be a positive"),
    (dict(rho=0.0), "rho must be a positive"),
    (dict(rho=float("nan")), "rho must be a positive"),
    (dict(rho="big"), "rho must be a positive"),
    (dict(rho=[]), "rho is empty"),
    (dict(rho=[0.1, -1.0]), "rho must be a positive"),
    (dict(rho=True), "rho must be a positive"),
    (dict(rho=torch.tensor([[0.1, 0.2]])), "rho must be a positive"),
    (dict(norm="l3"), "norm must be one of"),
    (dict(kind="max"), "kind must be one of"),
    (dict(adaptive="yes"), "adaptive must be one of"),
    (dict(adaptive="keskar"), "adaptive='keskar' is Keskar"),
    (dict(eta=0.01), "only applies to adaptive"),
    (dict(adaptive=True, eta=-1.0), "eta must be"),
    (dict(steps=0), "steps must be an integer"),
    (dict(restarts=0), "restarts must be an integer"),
    (dict(kind="average", n_samples=1), "n_samples must be"),
    (dict(m=0), "m must be an integer"),
    (dict(kind="average", m=4), "m-sharpness is defined for the worst case"),
    (dict(m=1000), r"m must be in \[1, 20\]"),
    (dict(perturb="biases"), "perturb must be one of"),
    (dict(by="param"), "by must be one of"),
])
def test_bad_input_raises(kwargs, match, snapshot):
    model = tiny_mlp()
    snap = snapshot(model)
    probe = Probe(model, tiny_data(20))
    kwargs = {"rho": 0.1, **kwargs}
    with pytest.raises(LandscapeError, match=match):
        sharpness(probe, **kwargs)
    snap.assert_unchanged()


def test_bad_input_flatness_and_nothing_to_perturb():
    probe = quad_probe(Quadratic(spd(LAMS), torch.zeros(6, dtype=F64)))
    with pytest.raises(LandscapeError, match="rho must be a positive"):
        first_order_flatness(probe, -1.0)
    with pytest.raises(LandscapeError, match="perturb must be one of"):
        first_order_flatness(probe, 0.1, perturb="none")
    with pytest.raises(LandscapeError, match="no probed parameter has ndim > 1"):
        first_order_flatness(probe, 0.1, perturb="weights")
    with pytest.raises(LandscapeError, match="scaling c is zero everywhere"):
        sharpness(probe, 0.1, adaptive=True)  # w = 0 and eta = 0
    with pytest.raises(LandscapeError, match="sets adaptive=True"):
        adaptive_sharpness(probe, 0.1, adaptive=False)
