"""PAC-Bayes flatness: the largest Gaussian weight noise the training error (or loss) tolerates.

For a target increase d (0.1 by default) and a criterion C (the training error 1 - accuracy, or
the loss L), the PAC-Bayes flatness sigma is the largest noise level with

    f(sigma) = E over u ~ N(0, diag(s(sigma)^2)) of C(w + u) - C(w) <= d

where s(sigma)_i = sigma (isotropic noise) or s(sigma)_i = sqrt(sigma^2 w_i^2 + eps^2)
(magnitude-aware noise, Jiang et al.'s "mag" measures, eps = 1e-3). f is estimated by Monte Carlo
with N draws z_j ~ N(0, I), u_j = s(sigma) * z_j, and the same z_j at every sigma (common random
numbers), so the estimate is a smooth function of sigma and bisection on log sigma converges to
one crossing f(sigma) = d. Where f is not monotone that crossing need not be the largest one.

Reported with sigma: the measure 1/sigma^2 (Jiang et al.'s "pacbayes.flatness" and, for
magnitude noise, "pacbayes.mag.flatness"), and the PAC-Bayes bound terms for the posterior
Q = N(w, diag(s^2)) and the prior P = N(w0, diag(s^2)) (w0 the initialization if given, else 0):

    KL(Q || P) = sum_i (w_i - w0_i)^2 / (2 s_i^2)      (= ||w - w0||^2 / (2 sigma^2) isotropic)
    bound_term = sqrt((KL + log(2 sqrt(m) / confidence)) / (2 m))   (Maurer's form of McAllester)

with m the number of training samples: with probability >= 1 - confidence over the sample,
E_Q[test error] <= E_Q[train error] + bound_term, *for a prior fixed before seeing the data*.
Here sigma (hence the prior's variance) is chosen on the data, so the number is a complexity
measure, not a certificate: Dziugaite and Roy (2017) and Jiang et al. (2020) pay for the choice
with a union bound over a grid of sigmas (log of the grid size added to the KL).

The Monte Carlo error is the standard error of f(sigma) over the draws, and the standard error of
sigma by the delta method, stderr(f) / (df / dsigma), with the slope as the secant between the
evaluated levels nearest the bracket at least SLOPE_SPAN (5%) outside it, so that a step of a
discrete criterion (the error) inside a narrow bracket does not pass for a steep slope.

References:
    Dziugaite and Roy, Computing Nonvacuous Generalization Bounds for Deep (Stochastic) Neural
    Networks with Many More Parameters than Training Data (UAI 2017).
    Jiang, Neyshabur, Mobahi, Krishnan, Bengio, Fantastic Generalization Measures and Where to
    Find Them (ICLR 2020), sections on PAC-Bayesian flatness (sigma found by bisection, target
    deviation 0.1 of the training error).
    Maurer, A Note on the PAC Bayesian Theorem (2004).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._random import generator, normal_like
from ._results import jsonable_without
from ._validate import Integer, OneOf, Positive, validate_params
from .errors import LandscapeError
from .probe import Cost, Probe

CRITERIA = ("error", "loss")
NOISES = ("isotropic", "magnitude")
SIGMA_LIMITS = (1e-12, 1e12)  # the bracket search gives up outside these noise levels
SLOPE_SPAN = 1.05  # the slope for sigma's error: a secant at least 5% outside the bracket


@dataclass(frozen=True)
class PacBayesResult:
    """PAC-Bayes flatness: the largest noise level sigma with f(sigma) <= target.

    Attributes:
        value: sigma, the largest noise level found whose Monte Carlo increase is <= target
            (the lower end of `bracket`). Isotropic: the per-coordinate standard deviation in
            parameter units; magnitude: relative to |w_i| (s_i = sqrt(sigma^2 w_i^2 + eps^2)).
        stderr: Monte Carlo standard error of sigma by the delta method (None when the bracket
            has no positive slope).
        bracket: (lo, hi) with f(lo) <= target < f(hi) for the drawn noise; hi is inf when no
            noise level up to 1e12 reached the target.
        flatness: 1 / sigma^2 (Jiang et al.'s measure: larger is sharper).
        increase: f(sigma), the mean increase of the criterion at sigma; increase_stderr its
            standard error over the draws.
        criterion: "error" (1 - accuracy) or "loss". base: the criterion at w.
        target: the allowed increase d. noise: "isotropic" or "magnitude"; eps: the magnitude
            noise floor.
        kl: KL(N(w, diag(s^2)) || N(w0, diag(s^2))) at sigma; w0 the init, or 0.
        distance: ||w - w0||_2 (||w||_2 without an init).
        bound_term: sqrt((kl + log(2 sqrt(m) / confidence)) / (2 m)), m = n_train.
        n_train: the probe's number of samples m. confidence: the bound's delta.
        converged: the bracket reached hi / lo <= 1 + rtol within max_iter evaluations.
        n_eval: noise levels evaluated (each n_samples forward passes).
        settings: the options used. seed: the seed of the draws. cost: probe work and seconds.
    """

    value: float
    stderr: float | None
    bracket: tuple[float, float]
    flatness: float
    increase: float
    increase_stderr: float
    criterion: str
    base: float
    target: float
    noise: str
    eps: float
    kl: float
    distance: float
    bound_term: float
    n_train: int
    confidence: float
    converged: bool
    n_eval: int
    settings: dict[str, Any]
    seed: int
    cost: Cost
    scale: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def sigma(self) -> float:
        return self.value

    def to_dict(self) -> dict[str, Any]:
        return jsonable_without(self, "scale")


@validate_params(criterion=OneOf(CRITERIA), noise=OneOf(NOISES), target=Positive(),
                 eps=Positive(), sigma0=Positive(), rtol=Positive(), confidence=Positive(1.0),
                 n_samples=Integer(2), max_iter=Integer(2))
def pac_bayes_flatness(
    probe: Probe,
    *,
    target: float = 0.1,
    criterion: str = "error",
    noise: str = "isotropic",
    eps: float = 1e-3,
    init: Tensor | None = None,
    n_samples: int = 20,
    sigma0: float = 1e-2,
    rtol: float = 1e-2,
    max_iter: int = 60,
    confidence: float = 0.05,
    seed: int = 0,
    progress: bool = False,
) -> PacBayesResult:
    """The largest Gaussian weight noise sigma that raises the criterion by at most `target`.

    f(sigma) = mean over j of C(w + s(sigma) * z_j) - C(w), z_j ~ N(0, I) drawn once (common
    random numbers); s(sigma) = sigma (isotropic) or sqrt(sigma^2 w^2 + eps^2) (magnitude).
    The search multiplies sigma0 by 10 (or divides) until f crosses the target, then bisects
    on log sigma until hi / lo <= 1 + rtol. See the module docstring for the bound terms.

    Args:
        probe: the model, data and loss (all probed parameters get noise).
        target: the allowed increase d > 0 (Jiang et al.: 0.1 of the training error).
        criterion: "error" (1 - accuracy; needs a classification probe) or "loss".
        noise: "isotropic" (N(0, sigma^2)) or "magnitude" (N(0, sigma^2 w^2 + eps^2)).
        eps: the magnitude noise floor (> 0; magnitude noise only, Jiang et al. use 1e-3).
        init: the initial weights w0 (flat, like `probe.flat_params()`) for the KL term;
            None: w0 = 0 (Jiang et al.'s "pacbayes.orig").
        n_samples: Monte Carlo draws (>= 2), reused at every sigma.
        sigma0: the first noise level tried (> 0).
        rtol: stop when the bracket's hi / lo <= 1 + rtol.
        max_iter: the most noise levels evaluated.
        confidence: the delta of the PAC-Bayes bound term, in (0, 1).
        seed: seeds the draws (own `torch.Generator`).
        progress: show a progress bar.

    Returns:
        A `PacBayesResult`; `value` is sigma. When the search does not bracket the target or
        runs out of iterations, `converged` is False and a warning says why.

    Raises:
        LandscapeError: bad options, criterion="error" on a probe without accuracy, an `init`
            of the wrong size, or magnitude noise whose floor eps alone exceeds the target.

    Example:
        >>> from landscape.data import quadratic_probe
        >>> probe = quadratic_probe([3.0, 1.0])  # L(w) = 0.5 (3 w_0^2 + w_1^2), at its minimum 0
        >>> r = pac_bayes_flatness(probe, criterion="loss", target=0.02, n_samples=2000)
        >>> abs(r.value - (2 * 0.02 / 4) ** 0.5) < 0.01  # sigma^2 tr(H) / 2 = target
        True
    """
    settings = dict(target=target, criterion=criterion, noise=noise, eps=eps,
                    has_init=init is not None, n_samples=n_samples, sigma0=sigma0, rtol=rtol,
                    max_iter=max_iter, confidence=confidence)
    meter = probe.meter()
    w = probe.flat_params()
    w0 = torch.zeros_like(w) if init is None else probe.batch_pass.check_vector(init, "init")
    base = _criterion(probe, None, criterion)
    gen = torch.Generator().manual_seed(seed)
    draw_seeds = torch.randint(0, 2**62, (n_samples,), generator=gen).tolist()

    def scale(sigma: float) -> Tensor:
        if noise == "isotropic":
            return torch.full_like(w, sigma)
        return torch.sqrt(sigma**2 * w**2 + eps**2)

    def increases(sigma: float) -> Tensor:
        s = scale(sigma)
        vals = [_criterion(probe, s * normal_like(w, generator(k)), criterion) - base
                for k in draw_seeds]
        return torch.tensor(vals, dtype=torch.float64)

    bar = tqdm(total=max_iter, disable=not progress, desc="PAC-Bayes bisection")
    evals: dict[float, Tensor] = {}

    def f(sigma: float) -> float:
        bar.update(1)
        evals[sigma] = increases(sigma)
        m = float(evals[sigma].mean())
        return m if math.isfinite(m) else math.inf  # a diverged draw exceeds any target

    if noise == "magnitude":
        floor = float(increases(0.0).mean())
        if not floor <= target:
            raise LandscapeError(
                f"magnitude noise: the floor eps={eps} alone raises the {criterion} by "
                f"{floor:.4g} > target={target}; lower eps."
            )
    lo, hi, f_lo, f_hi, note = _search(f, sigma0, target, rtol, max_iter)
    bar.close()
    converged = note is None
    if note is not None:
        warnings.warn(f"pac_bayes_flatness: {note}", stacklevel=2)
    vals = evals.get(lo, torch.zeros(n_samples, dtype=torch.float64))
    inc = float(vals.mean())
    inc_se = float(vals.std() / math.sqrt(n_samples))
    stderr = _sigma_stderr({k: float(v.mean()) for k, v in evals.items()}, lo, hi, inc_se)
    s = scale(lo)
    diff2 = (w - w0) ** 2
    kl = float((diff2 / (2 * s**2)).sum()) if lo > 0 or noise == "magnitude" else math.inf
    m = probe.n_samples
    bound = math.sqrt((kl + math.log(2 * math.sqrt(m) / confidence)) / (2 * m))
    return PacBayesResult(
        value=lo, stderr=stderr, bracket=(lo, hi), flatness=1.0 / lo**2 if lo > 0 else math.inf,
        increase=inc, increase_stderr=inc_se, criterion=criterion, base=base, target=target,
        noise=noise, eps=eps if noise == "magnitude" else 0.0, kl=kl,
        distance=float(diff2.sum().sqrt()), bound_term=bound, n_train=m, confidence=confidence,
        converged=converged, n_eval=len(evals), settings=settings, seed=seed,
        cost=meter.cost(), scale=s,
    )


def _search(f, sigma0: float, target: float, rtol: float,
            max_iter: int) -> tuple[float, float, float, float, str | None]:
    """(lo, hi, f(lo), f(hi), note): bracket f = target by factors of 10, then bisect log sigma.

    note is None on success, else why the search stopped early.
    """
    lo, hi, f_lo, f_hi = 0.0, math.inf, 0.0, math.inf
    sigma, n = sigma0, 0
    while n < max_iter and not (lo > 0 and math.isfinite(hi)):
        v = f(sigma)
        n += 1
        if v <= target:
            lo, f_lo = sigma, v
            if sigma * 10 > SIGMA_LIMITS[1]:
                return lo, hi, f_lo, f_hi, (
                    f"the increase stays <= target={target} up to sigma={sigma:.3g}; "
                    "the criterion may be bounded (e.g. an error that cannot rise by target)."
                )
            sigma *= 10
        else:
            hi, f_hi = sigma, v
            if sigma / 10 < SIGMA_LIMITS[0]:
                return lo, hi, f_lo, f_hi, (
                    f"the increase exceeds target={target} already at sigma={sigma:.3g}."
                )
            sigma /= 10
    while n < max_iter and hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        v = f(mid)
        n += 1
        if v <= target:
            lo, f_lo = mid, v
        else:
            hi, f_hi = mid, v
    if not (lo > 0 and math.isfinite(hi) and hi / lo <= 1 + rtol):
        return lo, hi, f_lo, f_hi, f"max_iter={max_iter} reached with bracket ({lo:.4g}, {hi:.4g})."
    return lo, hi, f_lo, f_hi, None


def _sigma_stderr(means: dict[float, float], lo: float, hi: float,
                  inc_se: float) -> float | None:
    """stderr(f) / slope, the slope a secant between evaluated levels around the bracket."""
    below = [x for x in means if 0 < x <= lo / SLOPE_SPAN] or [lo]
    above = [x for x in means if math.isfinite(x) and x >= hi * SLOPE_SPAN] or [hi]
    a, b = max(below), min(above)
    if not (0 < a < b and math.isfinite(b) and math.isfinite(means.get(b, math.nan))):
        return None
    slope = (means[b] - means[a]) / (b - a)
    return inc_se / slope if slope > 0 else None


def _criterion(probe: Probe, delta: Tensor | None, criterion: str) -> float:
    ev = probe.evaluate(delta)
    if criterion == "loss":
        return ev.loss
    if ev.accuracy is None:
        raise LandscapeError(
            "criterion='error' needs accuracy, which this probe does not report (not a "
            "classification loss); use criterion='loss'."
        )
    return 1.0 - ev.accuracy

