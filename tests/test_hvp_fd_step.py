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
    probe.loss()  # the first-use data checks, before the meter
    meter = probe.meter()
    hz = probe.hvp(z)
    assert float(z @ hz) == pytest.approx(EXACT_TOP, rel=1e-3)
    assert probe.products.fd.length_cap < math.inf  # shortened, and kept for later products
    # one batch: a product is 2 gradients and the loss at w; each retry 2 gradients more
    assert meter.cost().n_batch_forward >= 3 + 2 and meter.cost().n_hvp == 1


def test_the_top_eigenvalue_by_finite_differences_is_the_exact_one():
    res = hessian_eigenvalues(_probe(), k=1, tol=1e-4)
    assert res.eigenvalues[0] == pytest.approx(EXACT_TOP, rel=1e-3)


def test_a_random_direction_keeps_the_rule_step():
    # along a random vector the curvature is WEAK and the loss quadratic: no retry
    probe = _probe()
    r = torch.randn(N, generator=torch.Generator().manual_seed(3))
    probe.loss()
    meter = probe.meter()
    probe.hvp(r)
    assert probe.products.fd.length_cap == math.inf
    assert meter.cost().n_batch_forward == 3


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


def test_a_step_the_losses_cannot_judge_is_verified_by_halving(monkeypatch):
    # losses whose rounding hides any truncation, on a probe whose step was already shortened
    # once (to the rule's length: 13% off along z): the product is made again at half the step,
    # the difference of the two shows the truncation, and the step is shortened until it meets
    # the target; the returned product cancels the h^2 term (Richardson)
    monkeypatch.setattr(hvp_fd, "LOSS_ROUNDING", 1e12)
    probe = _probe()
    z = probe.model.z.clone()
    fd = probe.products.fd
    rule = fd.length_cap = fd.step(z)[0]  # eps along a unit vector: the rule's length
    probe.loss()
    meter = probe.meter()
    hz = probe.hvp(z)
    assert float(z @ hz) == pytest.approx(EXACT_TOP, rel=1e-3)
    assert float(torch.linalg.vector_norm(hz - EXACT_TOP * z)) < 1e-3 * EXACT_TOP
    assert probe.products.halvings >= 2 and fd.length_cap < 0.1 * rule
    # each try: 2 gradients, 2 at half the step (the loss at w once)
    assert meter.cost().n_batch_forward >= 1 + 2 * 4 and meter.cost().n_hvp == 1


def test_halved_shorter_follows_the_h_squared_law_and_ignores_rounding():
    f32 = torch.float32
    # the product at h/2 is off by 1e-2 of its size 10 (target 1e-4): shorten h by 0.7 / 10
    assert hvp_fd.halved_shorter(0.1, 10.0, 0.0, 1.0, 1.0, f32) == pytest.approx(0.07)
    assert hvp_fd.halved_shorter(1e-4, 10.0, 0.0, 1.0, 1.0, f32) is None  # within the target
    # a difference within the gradients' rounding (G = 1e6 at h / 2 = 1e-3) is not truncation
    assert hvp_fd.halved_shorter(0.1, 10.0, 1e6, 1.0, 1e-3, f32) is None
    assert hvp_fd.halved_shorter(1e6, 1.0, 0.0, 1.0, 1.0, f32) == 0.01  # at most 100 times
