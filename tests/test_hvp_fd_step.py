"""The finite difference's step is shortened where it is too long for the curvature along v.

Over many parameters the step rule's length grows as sqrt(N); along a direction where the loss
stops being quadratic within that length the central difference is wrong (GPT-2 small's top
eigenvector: 15.6 for 119). The model here has that shape on a small scale: a loss
(cosh(k z.p) - 1) / k^2 along one unit direction z, whose fourth derivative along z is k^2 times
its second, plus a weak quadratic; over 200k parameters the rule's step along z is long enough
for a 13% truncation error.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from landscape import Probe, hessian_eigenvalues, hvp_fd
from landscape.hvp_fd import shorter_step

N, K, OFFSET, WEAK = 200_000, 100.0, 0.005, 0.01


class CoshAlongZ(nn.Module):
    """Per-sample value (cosh(K z.p) - 1) / K^2 + WEAK |p|^2 / 2: Hessian cosh(K z.p) z z^T +
    WEAK I, so the top eigenvalue is cosh(K OFFSET) + WEAK, with eigenvector z."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(N, generator=gen)
        self.register_buffer("z", z / z.norm())
        p = 0.02 * torch.randn(N, generator=gen)
        p += (OFFSET - float(self.z @ p)) * self.z  # z.p = OFFSET
        self.p = nn.Parameter(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.z @ self.p
        value = (torch.cosh(K * s) - 1) / K**2 + WEAK * (self.p @ self.p) / 2
        return value.expand(x.shape[0])


def _probe(**kwargs) -> Probe:
    x = torch.zeros(8, 1)
    return Probe(CoshAlongZ(), (x, torch.zeros(8)), loss_fn=lambda out, _y: out.mean(),
                 hvp_method="finite_difference", **kwargs)


EXACT_TOP = math.cosh(K * OFFSET) + WEAK


def test_the_rule_alone_is_too_long_here():
    # the premise: the rule's step along z gives a truncation error of about 13%
    probe = _probe()
    fd = probe.products.fd
    h = fd.step(probe.model.z.clone())[0]
    assert (K * h) ** 2 / 6 > 0.05


def test_a_product_along_a_sharp_direction_is_accurate(monkeypatch):
    probe = _probe()
    z = probe.model.z.clone()
    meter = probe.meter()
    hz = probe.hvp(z)
    assert float(z @ hz) == pytest.approx(EXACT_TOP, rel=1e-3)
    assert probe.products.fd.length_cap < math.inf  # shortened, and kept for later products
    assert meter.cost().n_gradient >= 2  # each retry's two gradients are counted


def test_the_top_eigenvalue_by_finite_differences_is_the_exact_one():
    res = hessian_eigenvalues(_probe(), k=1, tol=1e-4)
    assert res.eigenvalues[0] == pytest.approx(EXACT_TOP, rel=1e-3)


def test_a_random_direction_keeps_the_rule_step():
    # along a random vector the curvature is WEAK and the loss quadratic: no retry
    probe = _probe()
    r = torch.randn(N, generator=torch.Generator().manual_seed(3))
    meter = probe.meter()
    probe.hvp(r)
    assert probe.products.fd.length_cap == math.inf
    assert meter.cost().n_gradient == 0


def test_shorter_step_follows_the_h_squared_law_and_ignores_rounding():
    f32 = torch.float32
    # error 2 |q_grad - q_loss| = 0.2 against 1e-4 of a product of size 10: shorten
    h = shorter_step(10.1, 10.0, 10.0, 1.0, 1.0, f32)
    assert h == pytest.approx(0.7 * math.sqrt(1e-3 / 0.2))
    assert shorter_step(10.0, 10.0, 10.0, 1.0, 1.0, f32) is None  # no truncation
    # a difference within the losses' rounding (loss scale 1e6 at h = 1e-3) is not truncation
    assert shorter_step(10.1, 10.0, 10.0, 1e-3, 1e6, f32) is None
    assert shorter_step(1e6, 0.0, 1.0, 1.0, 1.0, f32) == 0.01  # at most 100 times shorter
    assert hvp_fd.MAX_SHORTER >= 2
