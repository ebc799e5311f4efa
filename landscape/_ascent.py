"""Projected gradient ascent in a scaled ball, shared by worst-case sharpness (plain and
adaptive) and first-order flatness.

Both maximize an objective f(w + delta) over ||delta / c||_p <= rho, in the scaled coordinates
u = delta / c: `scaling` builds c (1, |w| + eta, filter norms, Keskar's |w| + 1; zero on the
parameters that are not perturbed) and `ascent` runs APGD-style steps (Croce and Hein 2020) with
random starts and the best point kept, so the value found is a lower bound of the maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._random import normal_like, uniform_like
from ._reduce import fnorm
from ._results import jsonable_without
from .probe import Cost, Probe

PERTURB = ("all", "weights")
START_RADII = (0.01, 0.5)  # of rho: the first random start, and the further restarts

# objective(delta, need_grad) -> (value, gradient w.r.t. delta or None)
Objective = Callable[[Tensor, bool], tuple[float, Tensor | None]]


def scaling(probe: Probe, adaptive: bool | str = False, *, eta: float = 0.0,
            perturb: str = "all") -> Tensor:
    """The flat scaling vector c (zero on parameters that are not perturbed).

    False: 1; True: |w| + eta; "filter": ||w[i]||_2 + eta over each filter i of a parameter with
    ndim > 1, |w| + eta for the others; "keskar": |w| + 1. perturb="weights" zeroes c on
    parameters with ndim <= 1.
    """
    w = probe.flat_params()
    if adaptive is False:
        c = torch.ones_like(w)
    elif adaptive == "keskar":
        c = w.abs() + 1.0
    else:
        c = w.abs() + eta
        if adaptive == "filter":
            for info in probe.param_info:
                if info.ndim > 1:
                    block = w[info.start:info.stop].view(info.shape[0], -1)
                    norms = block.norm(dim=1, keepdim=True) + eta
                    c[info.start:info.stop] = norms.expand_as(block).reshape(-1)
    if perturb == "weights":
        for info in probe.param_info:
            if info.ndim <= 1:
                c[info.start:info.stop] = 0.0
    return c


def without_delta(result: Any) -> dict[str, Any]:
    """`to_jsonable(result)` without its (parameter-sized) `delta` field, never converted."""
    return jsonable_without(result, "delta")


def passes(cost: Cost) -> tuple[int, int]:
    """(forward, backward) passes: a gradient is one of each, an HVP one more backward."""
    return cost.n_forward + cost.n_gradient, cost.n_gradient + cost.n_hvp


def apgd_checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints (Croce and Hein 2020): ceil(p_j N) with p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    ps = [0.0, 0.22]
    while ps[-1] < 1.0:
        ps.append(ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06))
    marks = (math.ceil(round(p * steps, 9)) for p in ps[1:])  # round: 0.57 * 100 is 57.0000001
    return sorted({k for k in marks if k < steps})


def ascent(
    objective: Objective,
    c: Tensor,
    rho: float,
    norm: str,
    *,
    steps: int,
    restarts: int,
    gen: torch.Generator,
    value0: float,
    initial_step: float = 2.0,
    momentum: float = 0.75,
    schedule: bool = True,
    progress: bool = False,
) -> tuple[float, Tensor]:
    """Maximize objective(c * u) over ||u||_p <= rho by projected gradient ascent in u.

    The first start is a random point at 1% of the radius, so that off a minimum the first
    step follows the gradient (it lands on SAM's point rho grad_u / ||grad_u||) and at a
    minimum, where the gradient vanishes, it follows the curvature; further restarts start at
    half the radius, for diversity (l2: a random direction; linf: uniform in the box of that
    half-width), on the coordinates where c != 0. Each restart takes `steps` steps of size
    eta_k (eta_0 = initial_step * rho) in the direction d_k = grad_u / ||grad_u||_2 (l2) or
    sign(grad_u) (linf), grad_u = c * grad_delta, with momentum as in APGD:
    z = P(u_k + eta_k d_k), u_{k+1} = P(u_k + a (z - u_k) + (1 - a)(u_k - u_{k-1})), a = 0.75.
    With `schedule`, at each APGD checkpoint the step is halved and the iterate reset to the
    best point when fewer than 75% of the steps since the last checkpoint increased the
    objective, or when neither the step nor the best value changed since then. The final
    iterate is evaluated too (one forward, no gradient). `schedule=False, momentum=1.0` is
    plain projected gradient ascent with the constant step `initial_step * rho`.

    Returns:
        (best value, best u), starting from (value0, 0): the objective at the center counts.
    """
    active = (c != 0).to(c.dtype)
    best_v, best_u = value0, torch.zeros_like(c)
    checks = set(apgd_checkpoints(steps)) if schedule else set()
    bar = tqdm(total=steps * restarts, disable=not progress, desc="sharpness ascent")

    def project(u: Tensor) -> Tensor:
        if norm == "linf":
            return u.clamp(-rho, rho)
        n = fnorm(u)
        return u * (rho / n) if n > rho else u

    def direction(grad_u: Tensor) -> Tensor:
        if norm == "linf":
            return grad_u.sign()
        n = fnorm(grad_u)
        return grad_u / n if n > 0 else grad_u

    for restart in range(restarts):
        radius = START_RADII[0] if restart == 0 else START_RADII[1]
        if norm == "linf":
            u = 2 * uniform_like(c, gen) - 1
            u = u * active * (radius * rho)
        else:
            z = normal_like(c, gen) * active
            u = z * (radius * rho / max(fnorm(z), 1e-300))
        u_prev = u
        step = initial_step * rho
        run_best_v, run_best_u = -math.inf, u
        prev_v, n_up, last_check = -math.inf, 0, 0
        step_at_check, best_at_check = step, -math.inf
        for k in range(steps):
            v, grad = objective(c * u, True)
            bar.update(1)
            finite = math.isfinite(v) and bool(torch.isfinite(grad).all())
            if finite and v > prev_v:
                n_up += 1
            prev_v = v if finite else prev_v
            if finite and v > run_best_v:
                run_best_v, run_best_u = v, u
            if not finite:  # diverged: back to the best point (or halfway in) with a smaller step
                step /= 2
                u = run_best_u if math.isfinite(run_best_v) else 0.5 * u
                u_prev = u
                continue
            zk = project(u + step * direction(c * grad))
            if k == 0:
                u_next = zk
            else:
                u_next = project(u + momentum * (zk - u) + (1 - momentum) * (u - u_prev))
            reset = False
            if k + 1 in checks:
                stalled = n_up < 0.75 * (k + 1 - last_check)
                stuck = step == step_at_check and run_best_v == best_at_check
                reset = stalled or stuck
                if reset:
                    step /= 2
                n_up, last_check = 0, k + 1
                step_at_check, best_at_check = step, run_best_v
            # on a reset, restart from the best point without momentum
            u_prev, u = (run_best_u, run_best_u) if reset else (u, u_next)
        v, _ = objective(c * u, False)
        if math.isfinite(v) and v > run_best_v:
            run_best_v, run_best_u = v, u
        if run_best_v > best_v:
            best_v, best_u = run_best_v, run_best_u
    bar.close()
    return best_v, best_u
