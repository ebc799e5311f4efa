"""Zeroth-order sharpness: worst case and average case, plain or adaptive, m-sharpness, per layer.

For a radius rho, a norm p in {2, inf} and a scaling vector c (docs/measures.md, "Sharpness"):

* worst case:   S_max = max over ||delta / c||_p <= rho of L(w + delta) - L(w)
* average case: S_avg = E over delta ~ N(0, rho^2 diag(c^2)) of L(w + delta) - L(w)

rho is the radius in the scaled coordinates u = delta / c; for the average case it is the
per-coordinate standard deviation (not divided by sqrt(n)), as in Andriushchenko et al. (2023).

Scalings c (the `adaptive` argument):

* False: c_i = 1 (plain sharpness, Foret et al. 2021; Keskar et al. 2017 without the box).
* True: element-wise c_i = |w_i| + eta (ASAM, Kwon et al. 2021, use eta = 0.01).
* "filter": for a parameter with two or more dimensions, c is constant over each filter (the
  slice `w[i]` along dim 0: a Linear row, a conv output channel) and equal to that filter's
  l2 norm plus eta, c_i = ||w_filter(i)||_2 + eta; parameters with one dimension or none
  (biases, normalization scales) use |w_i| + eta.
* "keskar": c_i = |w_i| + 1 with the linf box (Keskar et al. 2017's epsilon-sharpness, rho is
  their epsilon); the value is reported as a percentage of 1 + L(w).

With eta = 0 the adaptive measures (element-wise and filter-wise) are invariant to positive
rescalings that leave the function unchanged (Dinh et al. 2017), such as multiplying one ReLU
layer by alpha and the next by 1 / alpha.

The worst case is a lower bound of the true maximum: projected gradient ascent in u with the
step-size schedule of APGD (Croce and Hein 2020) as used by Andriushchenko et al. (2023): initial
step 2 rho, momentum 0.75, the step halved at checkpoints when progress stalls (and the iterate
reset to the best point), a random start inside the ball (at an exact minimum the gradient is
zero), and the best point seen kept. l2: normalized-gradient steps and projection onto the ball;
linf: sign steps and clipping.

References:
    Keskar et al., On Large-Batch Training for Deep Learning (ICLR 2017).
    Dinh et al., Sharp Minima Can Generalize for Deep Nets (ICML 2017).
    Foret et al., Sharpness-Aware Minimization (ICLR 2021).
    Kwon et al., ASAM: Adaptive Sharpness-Aware Minimization (ICML 2021).
    Croce and Hein, Reliable evaluation of adversarial robustness (ICML 2020).
    Andriushchenko et al., A Modern Look at the Relationship between Sharpness and
    Generalization (ICML 2023).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_int, check_radii
from ._model_prep import require_precision
from ._random import normal_like
from ._reduce import fnorm
from ._results import to_jsonable
from .errors import LandscapeError
from .probe import Cost, Probe

NORMS = ("l2", "linf")
KINDS = ("worst", "average")
ADAPTIVE = (False, True, "filter", "keskar")
PERTURB = ("all", "weights")
BY = (None, "layer")
START_RADII = (0.01, 0.5)  # of rho: the first random start, and the further restarts

# objective(delta, need_grad) -> (value, gradient w.r.t. delta or None)
Objective = Callable[[Tensor, bool], tuple[float, Tensor | None]]


def without_delta(result: Any) -> dict[str, Any]:
    """`to_jsonable(result)` without its (parameter-sized) `delta` field."""
    out = to_jsonable(result)
    out.pop("delta")
    return out


@dataclass(frozen=True)
class SharpnessResult:
    """One sharpness measurement.

    Attributes:
        rho: the radius (worst case) or per-coordinate standard deviation (average case) in the
            scaled coordinates u = delta / c.
        norm: "l2" or "linf". kind: "worst" or "average".
        adaptive: the scaling: False, True (|w| + eta), "filter" or "keskar" (|w| + 1).
        eta: the offset added to |w| in the adaptive scalings. perturb: "all" or "weights".
        loss: L(w). For m-sharpness the mean over groups of the group losses.
        perturbed_loss: worst case: L(w + delta*) at the best point found; average case: the mean
            of L(w + delta) over the draws. For m-sharpness the mean over groups.
        value: perturbed_loss - loss; with adaptive="keskar", 100 (perturbed_loss - loss) /
            (1 + loss), a percentage. The worst case is a lower bound of the true maximum.
        stderr: standard error of `value`: over draws (average case), over groups
            (m-sharpness); None for a single worst case (it is a bound, not an estimate).
        seed: the seed of the random starts or draws.
        steps, restarts: ascent settings (worst case). n_samples: draws (average case).
        m: group size for m-sharpness (None: all data at once); n_groups: number of groups.
        n_forward: forward passes (each gradient includes one); passes over one group each for
            m-sharpness. n_backward: backward passes. seconds: wall-clock time.
        delta: the best displacement found (flat, worst case without m), else None. Not part of
            `to_dict()`.
    """

    rho: float
    norm: str
    kind: str
    adaptive: bool | str
    eta: float
    perturb: str
    loss: float
    perturbed_loss: float
    value: float
    stderr: float | None
    seed: int
    steps: int | None
    restarts: int | None
    n_samples: int | None
    m: int | None
    n_groups: int | None
    n_forward: int
    n_backward: int
    seconds: float
    delta: Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return without_delta(self)


@dataclass(frozen=True)
class LayerSharpnessResult:
    """Layer-wise sharpness: one `SharpnessResult` per layer, each perturbing only that layer.

    `layers[i]` is the module name (as in `Probe.layers()`), `results[i]` its measurement.
    """

    layers: tuple[str, ...]
    results: tuple[SharpnessResult, ...]

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.results]

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per layer: the layer name and its result's fields (a table)."""
        pairs = zip(self.layers, self.results, strict=True)
        return [{"layer": name, **r.to_dict()} for name, r in pairs]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "results": [r.to_dict() for r in self.results]}


def sharpness(
    probe: Probe,
    rho: float | Sequence[float],
    *,
    norm: str = "l2",
    kind: str = "worst",
    adaptive: bool | str = False,
    eta: float = 0.0,
    steps: int = 20,
    restarts: int = 1,
    n_samples: int = 100,
    m: int | None = None,
    perturb: str = "all",
    by: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SharpnessResult | LayerSharpnessResult | list:
    """Worst-case or average-case sharpness of the loss at the probe's point w.

    worst:   max over ||delta / c||_p <= rho of L(w + delta) - L(w)   (a lower bound: see below)
    average: E over delta ~ N(0, rho^2 diag(c^2)) of L(w + delta) - L(w)

    L is the probe's sample-weighted mean loss; c is set by `adaptive` (module docstring). The
    worst case runs `steps` APGD-style projected gradient ascent steps from a random start
    (`restarts` times) and keeps the best point, so it is a lower bound of the maximum. The
    average case draws `n_samples` Gaussian displacements and reports the standard error.

    Args:
        probe: the model, data and loss.
        rho: radius (> 0) in scaled coordinates; a list of radii returns a list of results.
        norm: "l2" or "linf" (worst case; the average case is Gaussian whatever `norm`).
        kind: "worst" or "average".
        adaptive: False (c = 1), True (c = |w| + eta), "filter" (c = filter norm + eta) or
            "keskar" (c = |w| + 1, needs norm="linf", kind="worst"; value in percent of 1 + L).
        eta: offset of the adaptive scalings (>= 0); only with adaptive=True or "filter".
        steps: ascent steps (gradient evaluations) per restart.
        restarts: random starts; the best point over all is kept.
        n_samples: Gaussian draws for the average case (>= 2).
        m: m-sharpness (Foret et al. 2021): the data is split into consecutive groups of m
            samples (`Probe.sample_groups`), the worst case solved per group and the increases
            averaged; stderr is over groups. Worst case only. None: all data at once.
        perturb: "all" probed parameters, or "weights" only (parameters with ndim > 1; biases
            and normalization parameters stay fixed, as in Kwon et al.).
        by: None, or "layer": perturb one layer (a module of `Probe.layers()`) at a time and
            return a `LayerSharpnessResult` table.
        seed: seeds the random starts / draws (own `torch.Generator`; the global RNG is unused).
        progress: show a progress bar.

    Returns:
        A `SharpnessResult` (a `LayerSharpnessResult` with by="layer"); a list of them when `rho`
        is a list.

    Raises:
        LandscapeError: a bad rho, norm, kind, adaptive, eta, steps, restarts, n_samples, m,
            perturb or by, or a combination that does not exist; a bf16 or fp16 probe
            (rounding noise: build it with `dtype=torch.float32`).

    Example:
        >>> from landscape.data import quadratic_probe
        >>> probe = quadratic_probe([3.0, 1.0])  # L(w) = 0.5 (3 w_0^2 + w_1^2), at its minimum 0
        >>> round(sharpness(probe, 0.1).value, 6)  # rho^2 lambda_max / 2
        0.015
    """
    rhos, many = check_radii(rho)
    _check_options(norm=norm, kind=kind, adaptive=adaptive, eta=eta, steps=steps,
                   restarts=restarts, n_samples=n_samples, m=m, perturb=perturb, by=by)
    require_precision(probe, "sharpness")
    settings = dict(norm=norm, kind=kind, adaptive=adaptive, eta=eta, steps=steps,
                    restarts=restarts, n_samples=n_samples, m=m, perturb=perturb, seed=seed,
                    progress=progress)
    c = scaling(probe, adaptive, eta=eta, perturb=perturb)
    out = []
    for r in rhos:
        if by == "layer":
            out.append(_by_layer(probe, r, c, settings))
        else:
            out.append(_measure(probe, r, c, settings))
    return out if many else out[0]


def adaptive_sharpness(probe: Probe, rho: float | Sequence[float], **kwargs: Any):
    """`sharpness` with `adaptive=True`: c = |w| + eta (Kwon et al. 2021). See `sharpness`."""
    if "adaptive" in kwargs:
        raise LandscapeError("adaptive_sharpness sets adaptive=True; call sharpness() instead.")
    return sharpness(probe, rho, adaptive=True, **kwargs)


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


# ---------------------------------------------------------------------- validation


def _check_options(*, norm, kind, adaptive, eta, steps, restarts, n_samples, m, perturb,
                   by) -> None:
    if norm not in NORMS:
        raise LandscapeError(f"norm must be one of {NORMS}; got {norm!r}.")
    if kind not in KINDS:
        raise LandscapeError(f"kind must be one of {KINDS}; got {kind!r}.")
    if not (isinstance(adaptive, bool) or (isinstance(adaptive, str) and adaptive in ADAPTIVE)):
        raise LandscapeError(f"adaptive must be one of {ADAPTIVE}; got {adaptive!r}.")
    if perturb not in PERTURB:
        raise LandscapeError(f"perturb must be one of {PERTURB}; got {perturb!r}.")
    if by not in BY:
        raise LandscapeError(f"by must be one of {BY}; got {by!r}.")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) \
            or eta < 0:
        raise LandscapeError(f"eta must be a finite number >= 0; got {eta!r}.")
    if eta != 0 and adaptive not in (True, "filter"):
        raise LandscapeError(
            f"eta={eta} only applies to adaptive=True or 'filter' (c = |w| + eta); "
            f"with adaptive={adaptive!r} leave eta=0."
        )
    if adaptive == "keskar" and (norm != "linf" or kind != "worst"):
        raise LandscapeError(
            "adaptive='keskar' is Keskar et al.'s box: use norm='linf' and kind='worst'."
        )
    check_int("steps", steps, 1)
    check_int("restarts", restarts, 1)
    check_int("n_samples", n_samples, 2)
    if m is not None:
        check_int("m", m, 1)
        if kind != "worst":
            raise LandscapeError(
                "m-sharpness is defined for the worst case; use kind='worst' or m=None "
                "(the average case over groups equals the average case over all data)."
            )


# ---------------------------------------------------------------------- measurement


def _measure(probe: Probe, rho: float, c: Tensor, s: dict) -> SharpnessResult:
    if not bool((c != 0).any()):
        raise LandscapeError(
            "no coordinate is perturbed (the scaling c is zero everywhere): with "
            "perturb='weights' the probed parameters must include a weight with ndim > 1, "
            "and adaptive scalings with eta=0 need nonzero parameters."
        )
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(s["seed"])
    common = dict(rho=rho, norm=s["norm"], kind=s["kind"], adaptive=s["adaptive"], eta=s["eta"],
                  perturb=s["perturb"], seed=s["seed"])
    worst = s["kind"] == "worst"
    ascent = dict(steps=s["steps"] if worst else None, restarts=s["restarts"] if worst else None,
                  n_samples=None if worst else s["n_samples"])
    if s["m"] is None:
        meter = probe.meter()
        if worst:
            loss, perturbed, delta = _worst_case(probe, rho, c, s, gen)
            stderr = None
        else:
            loss, perturbed, stderr = _average_case(probe, rho, c, s["n_samples"], gen,
                                                    s["progress"])
            delta = None
        value = perturbed - loss
        if s["adaptive"] == "keskar":
            value = 100.0 * value / (1.0 + loss)
        n_fwd, n_bwd = _passes(meter.cost())
        return SharpnessResult(**common, loss=loss, perturbed_loss=perturbed, value=value,
                               stderr=stderr, **ascent, m=None, n_groups=None,
                               n_forward=n_fwd, n_backward=n_bwd,
                               seconds=time.perf_counter() - t0, delta=delta)
    groups = probe.sample_groups(s["m"])
    losses, perturbeds, values = [], [], []
    n_fwd = n_bwd = 0
    for group in tqdm(groups, disable=not s["progress"], desc="m-sharpness groups"):
        meter = group.meter()
        loss, perturbed, _ = _worst_case(group, rho, c, {**s, "progress": False}, gen)
        f, b = _passes(meter.cost())
        n_fwd, n_bwd = n_fwd + f, n_bwd + b
        inc = perturbed - loss
        values.append(100.0 * inc / (1.0 + loss) if s["adaptive"] == "keskar" else inc)
        losses.append(loss)
        perturbeds.append(perturbed)
    vals = torch.tensor(values, dtype=torch.float64)
    stderr = float(vals.std() / math.sqrt(len(vals))) if len(vals) > 1 else None
    return SharpnessResult(**common, loss=_mean(losses), perturbed_loss=_mean(perturbeds),
                           value=float(vals.mean()), stderr=stderr, **ascent, m=s["m"],
                           n_groups=len(groups), n_forward=n_fwd, n_backward=n_bwd,
                           seconds=time.perf_counter() - t0)


def _by_layer(probe: Probe, rho: float, c: Tensor, s: dict) -> LayerSharpnessResult:
    names, results = [], []
    for name, infos in probe.layers().items():
        mask = torch.zeros_like(c)
        for info in infos:
            mask[info.start:info.stop] = 1.0
        c_layer = c * mask
        if not bool((c_layer != 0).any()):
            continue  # e.g. a layer of biases only with perturb="weights"
        names.append(name)
        results.append(_measure(probe, rho, c_layer, s))
    return LayerSharpnessResult(tuple(names), tuple(results))


def _worst_case(probe: Probe, rho: float, c: Tensor, s: dict,
                gen: torch.Generator) -> tuple[float, float, Tensor]:
    """(L(w), L(w + delta*), delta*) by APGD-style ascent in u = delta / c."""
    loss0 = probe.loss()

    def objective(delta: Tensor, need_grad: bool) -> tuple[float, Tensor | None]:
        if need_grad:
            return probe.loss_and_gradient(delta)
        return probe.loss(delta), None

    best, u = ascent(objective, c, rho, s["norm"], steps=s["steps"], restarts=s["restarts"],
                     gen=gen, value0=loss0, progress=s["progress"])
    return loss0, best, c * u


def _average_case(probe: Probe, rho: float, c: Tensor, n_samples: int, gen: torch.Generator,
                  progress: bool) -> tuple[float, float, float]:
    """(L(w), mean of L(w + rho c z), standard error of the mean increase), z ~ N(0, I)."""
    loss0 = probe.loss()
    losses = []
    for _ in tqdm(range(n_samples), disable=not progress, desc="average sharpness"):
        z = normal_like(c, gen)
        losses.append(probe.loss(rho * c * z))
    vals = torch.tensor(losses, dtype=torch.float64)
    return loss0, float(vals.mean()), float(vals.std() / math.sqrt(n_samples))


def _passes(cost: Cost) -> tuple[int, int]:
    """(forward, backward) passes: a gradient is one of each, an HVP one more backward."""
    return cost.n_forward + cost.n_gradient, cost.n_gradient + cost.n_hvp


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# ---------------------------------------------------------------------- the ascent


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
            u = (2 * torch.rand(c.shape, generator=gen, dtype=c.dtype) - 1).to(c.device)
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
