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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._ascent import PERTURB, ascent, passes, scaling, without_delta
from ._ascent import apgd_checkpoints as apgd_checkpoints  # re-exported: tests, scripts
from ._checks import check_radii
from ._model_prep import require_precision
from ._random import normal_like
from ._reduce import fnorm
from ._validate import Integer, OneOf, Optional, Real, validate_params
from ._vector_space import using
from .errors import LandscapeError
from .probe import Probe

NORMS = ("l2", "linf")
KINDS = ("worst", "average")
ADAPTIVE = (False, True, "filter", "keskar")
BY = (None, "layer")





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


@validate_params(norm=OneOf(NORMS), kind=OneOf(KINDS), adaptive=OneOf(ADAPTIVE),
                 perturb=OneOf(PERTURB), by=OneOf(BY), eta=Real(0.0), steps=Integer(1),
                 restarts=Integer(1), n_samples=Integer(2), m=Optional(Integer(1)))
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
    _check_combinations(norm=norm, kind=kind, adaptive=adaptive, eta=eta, m=m)
    require_precision(probe, "sharpness")
    settings = dict(norm=norm, kind=kind, adaptive=adaptive, eta=eta, steps=steps,
                    restarts=restarts, n_samples=n_samples, m=m, perturb=perturb, seed=seed,
                    progress=progress)
    c = scaling(probe, adaptive, eta=eta, perturb=perturb)
    out = []
    with using(getattr(probe, "layout", None)):  # a sharded model: sums over the ranks
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


# ---------------------------------------------------------------------- validation


def _check_combinations(*, norm, kind, adaptive, eta, m) -> None:
    """The options that are allowed alone but not together."""
    if eta != 0 and adaptive not in (True, "filter"):
        raise LandscapeError(
            f"eta={eta} only applies to adaptive=True or 'filter' (c = |w| + eta); "
            f"with adaptive={adaptive!r} leave eta=0."
        )
    if adaptive == "keskar" and (norm != "linf" or kind != "worst"):
        raise LandscapeError(
            "adaptive='keskar' is Keskar et al.'s box: use norm='linf' and kind='worst'."
        )
    if m is not None and kind != "worst":
        raise LandscapeError(
            "m-sharpness is defined for the worst case; use kind='worst' or m=None "
            "(the average case over groups equals the average case over all data)."
        )


# ---------------------------------------------------------------------- measurement


def _measure(probe: Probe, rho: float, c: Tensor, s: dict) -> SharpnessResult:
    if not fnorm(c) > 0:  # (over all ranks' shards of a sharded model)
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
        n_fwd, n_bwd = passes(meter.cost())
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
        f, b = passes(meter.cost())
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
        if not fnorm(c_layer) > 0:
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


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


