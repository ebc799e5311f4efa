"""Local entropy (Chaudhari et al. 2017, Entropy-SGD), estimated by Langevin sampling.

For a coupling gamma > 0 and a temperature T > 0 (the paper's T = 1; its thermal noise epsilon
in the SGLD step corresponds to T = epsilon^2 / 2), the local entropy at w is

    F(w; gamma) = log integral exp(-(L(w') + gamma/2 ||w - w'||^2) / T) dw'.

It is the log normalizer of the local Gibbs measure p(w') ∝ exp(-(L(w') + gamma/2 ||w - w'||^2)
/ T). Langevin sampling of p (the paper's SGLD inner loop) gives expectations under p, such as
the mean <w'> and the paper's local-entropy gradient gamma (w - <w'>) (the gradient of -T F in
loss units), but not F itself. We estimate F by thermodynamic integration over gamma, relative
to the pure Gaussian it becomes as gamma -> infinity:

    Phi(w; gamma) = F(w; gamma) - (n/2) log(2 pi T / gamma)
                  = log E over u ~ N(0, (T / gamma) I) of exp(-L(w + u) / T),

which tends to -L(w) / T as gamma -> infinity, and (with x = w' - w)

    d Phi / d gamma = -E_gamma[x^T grad L(w + x)] / (2 T gamma)

(d F / d gamma = -E||x||^2 / (2T), with the virial identity E[x^T grad U] = n T for
U = L(w + x) + gamma/2 ||x||^2 removing the large cancelling terms n / (2 gamma)). So

    Phi(w; gamma) = -L(w) / T - integral from gamma to infinity of k(gamma') d log gamma',
    k(gamma) = E_gamma[x^T grad L(w + x)] / (2 T),

integrated by the trapezoidal rule in log gamma on a grid from min(gammas) to gamma_max
(`points_per_decade` nodes per decade, the requested gammas included), and closed with the tail
k(gamma_max) (exact when k decays as 1 / gamma, which it does: k ~ (T tr H - ||g||^2) /
(2 T gamma)). The estimate is unbiased up to the sampler's bias (none for MALA), the trapezoidal
error O(h^2) in the log-gamma spacing h, and the tail closure's O(lambda / gamma_max).

Each grid node runs its own chain (independent), started from N(0, (T / gamma) I) around w;
the Monte Carlo error of each expectation is by batch means over the chain, and the errors of
the nodes are added in quadrature through the integration weights.

On a quadratic L = L(w) + g^T x + x^T H x / 2 (g, H at w) everything is Gaussian:
Phi = -L(w)/T - 1/2 sum_i log(1 + lambda_i / gamma) + g^T (H + gamma I)^-1 g / (2 T).

Reference:
    Chaudhari, Choromanska, Soatto, LeCun, Baldassi, Borgs, Chayes, Sagun, Zecchina,
    Entropy-SGD: Biasing Gradient Descent Into Wide Valleys (ICLR 2017).
    Roberts and Tweedie, Exponential convergence of Langevin distributions and their discrete
    approximations (Bernoulli 1996): the Metropolis-adjusted Langevin algorithm (MALA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_int, check_positive, check_positive_values
from ._random import normal_like
from ._reduce import fdot
from ._results import to_jsonable
from ._validate import OneOf, validate_params
from .errors import LandscapeError
from .probe import Cost, Probe

SAMPLERS = ("mala", "langevin")
TARGET_ACCEPT = 0.574  # MALA's optimal acceptance rate (Roberts and Rosenthal 1998)


@dataclass(frozen=True)
class LocalEntropyResult:
    """Local entropy against gamma. Every per-gamma field is a tuple aligned with `gammas`.

    Attributes:
        gammas: the requested couplings, ascending.
        value: Phi(w; gamma) = F(w; gamma) - (n/2) log(2 pi T / gamma), in nats; -L(w)/T as
            gamma -> infinity, lower (more negative) where the neighbourhood is sharper.
        stderr: Monte Carlo standard error of `value`.
        entropy: F(w; gamma) = value + (n/2) log(2 pi T / gamma), the paper's local entropy.
        free_energy_gap: -T value - L(w), in loss units (>= 0 at a minimum of a convex loss):
            how much the local smoothing raises the loss; stderr: T * stderr.
        local_energy: E_gamma[L(w')] - L(w) under the local Gibbs measure; local_energy_stderr.
        gradient_norm: ||gamma (w - <w'>)||, the paper's local-entropy gradient (of -T F), from
            the chain's mean (biased upward by its Monte Carlo noise).
        acceptance: the chain's acceptance rate at each gamma (1 for "langevin").
        loss: L(w). temperature: T. n_params: n.
        nodes: the integration grid (ascending); node_k: k = E[x^T grad L(w + x)] / (2 T) at
            each node; node_k_stderr its standard error.
        settings: the options used. seed: the chains' seed. cost: probe work and seconds.
    """

    gammas: tuple[float, ...]
    value: tuple[float, ...]
    stderr: tuple[float, ...]
    entropy: tuple[float, ...]
    free_energy_gap: tuple[float, ...]
    local_energy: tuple[float, ...]
    local_energy_stderr: tuple[float, ...]
    gradient_norm: tuple[float, ...]
    acceptance: tuple[float, ...]
    loss: float
    temperature: float
    n_params: int
    nodes: tuple[float, ...]
    node_k: tuple[float, ...]
    node_k_stderr: tuple[float, ...]
    settings: dict[str, Any]
    seed: int
    cost: Cost

    def rows(self) -> list[dict[str, float]]:
        """One dict per requested gamma (a table)."""
        keys = ("value", "stderr", "entropy", "free_energy_gap", "local_energy",
                "local_energy_stderr", "gradient_norm", "acceptance")
        return [{"gamma": g, **{k: getattr(self, k)[i] for k in keys}}
                for i, g in enumerate(self.gammas)]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(frozen=True)
class _Chain:
    k: float
    k_se: float
    energy: float
    energy_se: float
    mean_x: Tensor
    acceptance: float


@validate_params(sampler=OneOf(SAMPLERS))
def local_entropy(
    probe: Probe,
    gammas: float | Sequence[float],
    *,
    temperature: float | None = None,
    gamma_max: float | None = None,
    points_per_decade: int = 4,
    n_steps: int = 200,
    burn_in: int = 50,
    sampler: str = "mala",
    step_size: float = 0.2,
    n_batches: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> LocalEntropyResult:
    """Local entropy Phi(w; gamma) = F(w; gamma) - (n/2) log(2 pi T / gamma) for each gamma.

    F(w; gamma) = log integral exp(-(L(w') + gamma/2 ||w - w'||^2) / T) dw' (Chaudhari et al.
    2017), by thermodynamic integration over gamma of Langevin-chain averages (module
    docstring). Cost: (burn_in + n_steps) gradients per grid node; the grid has about
    points_per_decade * log10(gamma_max / min(gammas)) + 1 nodes.

    Args:
        probe: the model, data and loss (full-data gradients: Langevin, not stochastic).
        gammas: the couplings gamma > 0 (a number or a list).
        temperature: T > 0. None: 1 / probe.n_samples, the Bayesian temperature at which
            exp(-L / T) = exp(-sum of per-sample losses) is the likelihood of the data (the
            paper's T = 1 treats the mean loss as the whole energy).
        gamma_max: the top of the integration grid (> max(gammas)); None: 100 max(gammas).
            It should exceed the Hessian's largest eigenvalues for the tail closure.
        points_per_decade: grid nodes per factor 10 of gamma.
        n_steps: recorded chain steps per node (after burn-in).
        burn_in: steps discarded per node; MALA adapts its step size during them.
        sampler: "mala" (Metropolis-adjusted Langevin: exact in the limit) or "langevin" (the
            paper's unadjusted SGLD step on the full data; biased by O(step_size)).
        step_size: the Langevin step h as a fraction of the Gaussian variance T / gamma: the
            update is x <- x - (h / 2T) grad U(x) + sqrt(h) xi, h = step_size * T / gamma.
            MALA starts from it and adapts it to an acceptance rate of 0.574.
        n_batches: batches for the batch-means standard errors (>= 2, <= n_steps).
        seed: seeds the chains (own `torch.Generator`).
        progress: show a progress bar over the grid nodes.

    Returns:
        A `LocalEntropyResult` with per-gamma tuples.

    Raises:
        LandscapeError: a bad gamma, temperature, gamma_max, sampler or count.

    Example:
        >>> import math
        >>> from landscape.data import quadratic_probe
        >>> probe = quadratic_probe([3.0, 1.0])  # L(w) = 0.5 (3 w_0^2 + w_1^2), at its minimum 0
        >>> r = local_entropy(probe, 1.0, temperature=1.0)
        >>> exact = -0.5 * (math.log(1 + 3.0) + math.log(1 + 1.0))
        >>> abs(r.value[0] - exact) < 4 * r.stderr[0] + 0.05
        True
    """
    gs = _check_gammas(gammas)
    if temperature is None:
        temperature = 1.0 / probe.n_samples
    check_positive("temperature", temperature)
    check_positive("step_size", step_size)
    check_int("points_per_decade", points_per_decade, 1)
    check_int("burn_in", burn_in, 0)
    check_int("n_batches", n_batches, 2)
    check_int("n_steps", n_steps, n_batches)
    if gamma_max is None:
        gamma_max = 100.0 * gs[-1]
    check_positive("gamma_max", gamma_max)
    if gamma_max <= gs[-1]:
        raise LandscapeError(
            f"gamma_max must exceed the largest gamma {gs[-1]}; got {gamma_max}."
        )
    settings = dict(gamma_max=gamma_max, points_per_decade=points_per_decade, n_steps=n_steps,
                    burn_in=burn_in, sampler=sampler, step_size=step_size, n_batches=n_batches)
    meter = probe.meter()
    T = float(temperature)
    loss0 = probe.loss()
    if not math.isfinite(loss0):
        raise LandscapeError(f"the loss at w is not finite ({loss0}); check the checkpoint.")
    nodes = _grid(gs, gamma_max, points_per_decade)
    gen = torch.Generator().manual_seed(seed)
    w = probe.flat_params()
    chains = [
        _run_chain(probe, g, T, w, gen, n_steps=n_steps, burn_in=burn_in, sampler=sampler,
                   step_size=step_size, n_batches=n_batches)
        for g in tqdm(nodes, disable=not progress, desc="local entropy (gamma grid)")
    ]
    k = np.array([c.k for c in chains])
    k_var = np.array([c.k_se for c in chains]) ** 2
    s = np.log(np.array(nodes))
    n = probe.num_params
    out: dict[str, list[float]] = {key: [] for key in (
        "value", "stderr", "entropy", "free_energy_gap", "local_energy", "local_energy_stderr",
        "gradient_norm", "acceptance")}
    for g in gs:
        j = nodes.index(g)
        weights = np.zeros(len(nodes))
        ds = np.diff(s[j:])
        weights[j:-1] += ds / 2
        weights[j + 1:] += ds / 2
        weights[-1] += 1.0  # the tail: integral beyond gamma_max of k / gamma' ~ k(gamma_max)
        phi = -loss0 / T - float(weights @ k)
        se = math.sqrt(float(weights**2 @ k_var))
        chain = chains[j]
        out["value"].append(phi)
        out["stderr"].append(se)
        out["entropy"].append(phi + 0.5 * n * math.log(2 * math.pi * T / g))
        out["free_energy_gap"].append(-T * phi - loss0)
        out["local_energy"].append(chain.energy - loss0)
        out["local_energy_stderr"].append(chain.energy_se)
        out["gradient_norm"].append(g * float(chain.mean_x.norm()))
        out["acceptance"].append(chain.acceptance)
    return LocalEntropyResult(
        gammas=tuple(gs), **{key: tuple(v) for key, v in out.items()}, loss=loss0,
        temperature=T, n_params=n, nodes=tuple(nodes), node_k=tuple(float(x) for x in k),
        node_k_stderr=tuple(float(c.k_se) for c in chains), settings=settings, seed=seed,
        cost=meter.cost(),
    )


def _grid(gammas: list[float], gamma_max: float, per_decade: int) -> list[float]:
    """Log-spaced nodes from min(gammas) to gamma_max, with every requested gamma included."""
    lo, hi = math.log10(gammas[0]), math.log10(gamma_max)
    count = max(2, math.ceil((hi - lo) * per_decade) + 1)
    nodes = set(np.logspace(lo, hi, count).tolist()[1:-1]) | set(gammas) | {gamma_max}
    return sorted(nodes)


def _run_chain(probe: Probe, gamma: float, T: float, w: Tensor, gen: torch.Generator, *,
               n_steps: int, burn_in: int, sampler: str, step_size: float,
               n_batches: int) -> _Chain:
    """One Langevin chain on U(x) = L(w + x) + gamma/2 ||x||^2 at temperature T."""
    scale = math.sqrt(T / gamma)
    x = normal_like(w, gen) * scale  # exact for the Gaussian part of the measure
    loss, grad = probe.loss_and_gradient(x)
    if not (math.isfinite(loss) and bool(torch.isfinite(grad).all())):
        x = torch.zeros_like(w)
        loss, grad = probe.loss_and_gradient(x)
    log_c = math.log(step_size)
    virial, energy = [], []
    sum_x = torch.zeros_like(w)
    n_accept = 0
    for step in range(burn_in + n_steps):
        h = math.exp(log_c) * T / gamma
        grad_u = grad + gamma * x
        y = x - (h / (2 * T)) * grad_u + math.sqrt(h) * normal_like(w, gen)
        loss_y, grad_y = probe.loss_and_gradient(y)
        finite = math.isfinite(loss_y) and bool(torch.isfinite(grad_y).all())
        if sampler == "langevin":
            if not finite:
                raise LandscapeError(
                    f"the unadjusted Langevin chain diverged at gamma={gamma}; lower step_size "
                    "or use sampler='mala'."
                )
            accept_prob = 1.0
        elif not finite:
            accept_prob = 0.0
        else:
            grad_uy = grad_y + gamma * y
            u_x = loss + 0.5 * gamma * fdot(x, x)
            u_y = loss_y + 0.5 * gamma * fdot(y, y)
            fwd = y - x + (h / (2 * T)) * grad_u  # log q(y | x) = -||fwd||^2 / (2h)
            bwd = x - y + (h / (2 * T)) * grad_uy
            log_a = -(u_y - u_x) / T - (fdot(bwd, bwd) - fdot(fwd, fwd)) / (2 * h)
            accept_prob = 1.0 if log_a >= 0 else math.exp(log_a)
        if torch.rand((), generator=gen).item() < accept_prob:
            x, loss, grad = y, loss_y, grad_y
            if step >= burn_in:
                n_accept += 1
        if step < burn_in:
            if sampler == "mala":
                log_c += 2.0 * (accept_prob - TARGET_ACCEPT) / math.sqrt(step + 1)
            continue
        virial.append(fdot(x, grad))
        energy.append(loss)
        sum_x += x
    k, k_se = _batch_means(np.array(virial) / (2 * T), n_batches)
    e, e_se = _batch_means(np.array(energy), n_batches)
    return _Chain(k=k, k_se=k_se, energy=e, energy_se=e_se, mean_x=sum_x / n_steps,
                  acceptance=n_accept / n_steps)


def _batch_means(samples: np.ndarray, n_batches: int) -> tuple[float, float]:
    """(mean, standard error) of a correlated chain by non-overlapping batch means."""
    size = len(samples) // n_batches
    means = samples[: size * n_batches].reshape(n_batches, size).mean(axis=1)
    return float(samples.mean()), float(means.std(ddof=1) / math.sqrt(n_batches))


def _check_gammas(gammas: Any) -> list[float]:
    """The distinct couplings, ascending, from a number or a list, tuple or 1-D array."""
    values, _ = check_positive_values(gammas, "gammas", "gamma")
    return sorted(set(values))
