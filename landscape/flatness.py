"""First-order flatness (GAM, Zhang et al. 2023): the largest gradient norm in a ball.

R1(w) = rho * max over ||delta||_2 <= rho of ||grad L(w + delta)||_2

The inner maximum is solved by the same APGD-style projected gradient ascent as the worst-case
sharpness (`landscape._ascent.ascent`), on f(delta) = ||grad L(w + delta)||, whose gradient is
H(w + delta) grad L(w + delta) / ||grad L(w + delta)||: one gradient and one Hessian-vector
product per step (`Probe.gradient_and_hvp`). A random start inside the ball is needed at an
exact minimum (g = 0); the best point seen is kept, so R1 is a lower bound of the true value.
GAM's own code approximates the maximum with one finite-difference step; we measure instead.

By the mean value theorem the zeroth-order flatness R0 = max L(w + delta) - L(w) (the worst-case
sharpness) is at most R1.

Reference:
    Zhang, Xu, Chen, Cui, Gradient Norm Aware Minimization Seeks First-Order Flatness and
    Improves Generalization (CVPR 2023).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._ascent import PERTURB, ascent, passes, scaling, without_delta
from ._checks import check_radii
from ._model_prep import require_precision
from ._reduce import fnorm
from ._validate import Integer, OneOf, validate_params
from ._vector_space import using
from .errors import LandscapeError
from .probe import Probe


@dataclass(frozen=True)
class FlatnessResult:
    """First-order flatness R1 = rho * max_grad_norm.

    Attributes:
        rho: the l2 radius of the ball (absolute units of the parameters).
        value: R1 = rho * max_grad_norm (a lower bound of the true R1).
        max_grad_norm: the largest ||grad L(w + delta)|| found in the ball.
        grad_norm: ||grad L(w)|| at the checkpoint.
        loss: L(w).
        perturb: "all" or "weights" (only parameters with ndim > 1 move).
        steps, restarts, seed: ascent settings.
        n_forward, n_backward, n_hvp: passes over the data (a gradient is one forward and one
            backward pass, a Hessian-vector product one more backward). seconds: wall-clock.
        delta: the displacement where the largest gradient norm was found (not in `to_dict()`).
    """

    rho: float
    value: float
    max_grad_norm: float
    grad_norm: float
    loss: float
    perturb: str
    steps: int
    restarts: int
    seed: int
    n_forward: int
    n_backward: int
    n_hvp: int
    seconds: float
    delta: Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return without_delta(self)


@validate_params(perturb=OneOf(PERTURB), steps=Integer(1), restarts=Integer(1))
def first_order_flatness(
    probe: Probe,
    rho: float | Sequence[float],
    *,
    steps: int = 20,
    restarts: int = 1,
    perturb: str = "all",
    seed: int = 0,
    progress: bool = False,
) -> FlatnessResult | list[FlatnessResult]:
    """R1(w) = rho * max over ||delta||_2 <= rho of ||grad L(w + delta)||_2 (GAM).

    Args:
        probe: the model, data and loss.
        rho: radius (> 0) of the l2 ball; a list of radii returns a list of results.
        steps: ascent steps per restart (each one gradient and one HVP).
        restarts: random starts; the best is kept.
        perturb: "all" probed parameters or "weights" only (ndim > 1).
        seed: seeds the random starts (own generator).
        progress: show a progress bar.

    Returns:
        A `FlatnessResult`, or a list of them when `rho` is a list.

    Raises:
        LandscapeError: bad rho, steps, restarts or perturb; a bf16 or fp16 probe (rounding
            noise: build it with `dtype=torch.float32`).

    Example:
        >>> from landscape.data import quadratic_probe
        >>> probe = quadratic_probe([3.0, 1.0])  # L(w) = 0.5 (3 w_0^2 + w_1^2), at its minimum 0
        >>> round(first_order_flatness(probe, 0.1).value, 6)  # rho^2 lambda_max
        0.03
    """
    rhos, many = check_radii(rho)
    require_precision(probe, "first-order flatness")
    c = scaling(probe, False, perturb=perturb)
    with using(getattr(probe, "layout", None)):  # a sharded model: sums over the ranks
        if not fnorm(c) > 0:
            raise LandscapeError(
                "perturb='weights' but no probed parameter has ndim > 1; use perturb='all'."
            )
        out = [_flatness_one(probe, r, c, steps, restarts, perturb, seed, progress)
               for r in rhos]
    return out if many else out[0]


def _flatness_one(probe: Probe, rho: float, c: Tensor, steps: int, restarts: int, perturb: str,
                  seed: int, progress: bool) -> FlatnessResult:
    t0 = time.perf_counter()
    meter = probe.meter()
    gen = torch.Generator().manual_seed(seed)
    loss, g = probe.loss_and_gradient()
    grad_norm = fnorm(g)

    def objective(delta: Tensor, need_grad: bool) -> tuple[float, Tensor | None]:
        if not need_grad:
            return fnorm(probe.gradient(delta)), None
        _, g_d, hg = probe.gradient_and_hvp(None, delta)
        norm = fnorm(g_d)
        return norm, (hg / norm if norm > 0 else torch.zeros_like(hg))

    best, u = ascent(objective, c, rho, "l2", steps=steps, restarts=restarts, gen=gen,
                     value0=grad_norm, progress=progress)
    cost = meter.cost()
    n_fwd, n_bwd = passes(cost)
    return FlatnessResult(rho=rho, value=rho * best, max_grad_norm=best, grad_norm=grad_norm,
                          loss=loss, perturb=perturb, steps=steps, restarts=restarts, seed=seed,
                          n_forward=n_fwd, n_backward=n_bwd, n_hvp=cost.n_hvp,
                          seconds=time.perf_counter() - t0, delta=c * u)
