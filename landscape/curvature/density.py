"""Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ)."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_int, check_positive, check_probe
from .._random import generator, rademacher
from .._reduce import accumulation_dtype, normalize_
from .._vector_space import dimension
from ..errors import LandscapeError
from ..probe import ParamSelection, Probe
from ._basis import Basis, default_budget
from ._common import operator, per_group, select
from .lanczos import lanczos_step, three_term_steps
from .results import DensityResult, LayerResults


def hessian_density(
    probe: Probe,
    *,
    n_vectors: int = 5,
    n_steps: int = 80,
    sigma: float | None = None,
    grid: int | np.ndarray = 1000,
    seed: int = 0,
    curvature: str = "hessian",
    params: ParamSelection = None,
    max_vectors: int | None = None,
    progress: bool = False,
    by: str | dict | None = None,
) -> DensityResult | LayerResults[DensityResult]:
    """The eigenvalue density of the Hessian at w by stochastic Lanczos quadrature.

    For each of `n_vectors` random unit vectors v (normalized Rademacher), `n_steps` Lanczos
    steps with full reorthogonalization (or, when the n_steps + 1 basis vectors do not fit the
    memory budget, the plain three-term recurrence) give a tridiagonal T = S diag(theta) S^T;
    the nodes are the Ritz values theta_j and the weights tau_j^2 = S_1j^2 / n_vectors (they
    sum to 1). The density is the Gaussian-broadened quadrature

        phi(t) = sum_j tau_j^2 exp(-(t - theta_j)^2 / (2 sigma^2)) / (sigma sqrt(2 pi)),

    normalized so its trapezoid integral over `grid` is 1. Its mean sum_j tau_j^2 theta_j equals
    the average of v^T H v, an unbiased estimate of tr(H) / n (n = number of parameters), which
    is reported with its standard error over the vectors, and as `trace` = n * mean (Hutchinson's
    estimate of tr(H) with n_vectors samples) with `trace_stderr` (see `DensityResult`); it
    agrees with `hessian_trace` within their combined standard errors, but Hutch++ has far less
    variance on the decaying spectra of trained networks, so prefer it for the trace. A run
    stops early when the Krylov space is invariant (at most n steps).

    Args:
        probe: the model, data and loss.
        n_vectors: number of random start vectors (PyHessian uses 1).
        n_steps: Lanczos steps per vector (products per vector).
        sigma: width of the Gaussian; None: 1% of the range of the nodes (or of their magnitude
            if the range is zero).
        grid: number of points of an even grid over [min node - 5 sigma, max node + 5 sigma], or
            the grid itself (1-D, increasing).
        seed: seeds the start vectors.
        curvature: "hessian" or "ggn".
        params: restrict to a subset of the probed parameters (the density of their block).
        by: None, "layer", "parameter", or a dict of block name -> parameter names or glob
            patterns (`{"attention": "*.attn.*", "mlp": "*.mlp.*"}`): one density per block
            (of its diagonal Hessian block), as a `LayerResults`; its `js_distances()` gives
            the pairwise Jensen-Shannon distances between the blocks' densities.
        max_vectors: memory budget in parameter-sized vectors (beyond the model, one gradient
            and one product). Full reorthogonalization stores n_steps + 1 vectors; when they do
            not fit, the three-term recurrence stores 2. Loss of orthogonality splits a
            converged eigenvalue into copies that share its weight, so the quadrature (the
            density's moments) stays accurate (Golub and Meurant 2010, ch. 4); the result says
            which was used. None: n_steps + 1 when they fit in 1 GiB, else 8 (so the
            recurrence for the default n_steps).
        progress: show a progress bar over products.

    Returns:
        DensityResult with grid, density, nodes, weights, mean (and mean_stderr), trace (and
        trace_stderr), cost; a LayerResults of them with `by`.

    Raises:
        LandscapeError: bad n_vectors, n_steps, sigma, grid or curvature.

    References:
        Ghorbani, Krishnan and Xiao, "An investigation into neural net optimization via Hessian
        eigenvalue density" (ICML 2019); Lin, Saad and Yang, "Approximating spectral densities of
        large matrices" (SIAM Review 2016); Yao et al., "PyHessian" (2020).
    """
    check_probe(probe)
    check_int("n_vectors", n_vectors)
    check_int("n_steps", n_steps)
    if sigma is not None:
        check_positive("sigma", sigma)
    if max_vectors is not None:
        check_int("max_vectors", max_vectors, minimum=2)
    grid_points = _check_grid(grid)
    operator(probe, curvature)  # validate early
    generator(seed)  # validates seed
    probe = select(probe, params)
    return per_group(probe, by, lambda p: _density(p, n_vectors, n_steps, sigma, grid_points,
                                                   grid, seed, curvature, max_vectors, progress))


def _density(probe: Probe, n_vectors: int, n_steps: int, sigma: float | None,
             grid_points: np.ndarray | None, grid: int | np.ndarray, seed: int, curvature: str,
             max_vectors: int | None, progress: bool) -> DensityResult:
    """The density of one probe's Hessian (see `hessian_density`)."""
    gen = generator(seed)
    matvec = operator(probe, curvature)
    n = dimension(probe.num_params)  # N (all ranks' elements of a sharded model's vectors)
    steps = min(n_steps, n)
    budget = max_vectors if max_vectors is not None else default_budget(n, probe.dtype,
                                                                        steps + 1)
    reorthogonalize = budget >= steps + 1
    meter = probe.meter()
    nodes, weights, means, second = [], [], [], []
    with tqdm(total=n_vectors * steps, disable=not progress, desc="density", unit="hvp") as bar:
        def counted(v: Tensor) -> Tensor:
            bar.update(1)
            return matvec(v)

        for _ in range(n_vectors):
            quadrature = _lanczos_quadrature if reorthogonalize else _recurrence_quadrature
            # the start vector is not named here: the quadrature's copy is the only one
            shape = (probe.num_params,)  # this rank's share of the n entries when sharded
            theta, tau2 = quadrature(counted, rademacher(shape, gen, probe.device, probe.dtype),
                                     steps)
            nodes.append(theta)
            weights.append(tau2 / n_vectors)
            means.append(float(tau2 @ theta))
            second.append(float(tau2 @ theta**2))
    cost = meter.cost()
    nodes_a, weights_a = np.concatenate(nodes), np.concatenate(weights)
    if sigma is None:
        spread = float(nodes_a.max() - nodes_a.min())
        sigma = 0.01 * (spread if spread > 0 else max(float(np.abs(nodes_a).max()), 1.0))
    if grid_points is None:
        grid_points = np.linspace(nodes_a.min() - 5 * sigma, nodes_a.max() + 5 * sigma,
                                  int(grid))
    z = (grid_points[:, None] - nodes_a[None, :]) / sigma
    density = (np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))) @ weights_a
    mass = np.trapezoid(density, grid_points)
    if mass > 0:
        density = density / mass
    m = np.asarray(means)
    stderr = float(m.std(ddof=1) / math.sqrt(len(m))) if len(m) > 1 else math.nan
    trace, trace_stderr = _trace(m, np.asarray(second), n)
    return DensityResult(
        grid=grid_points, density=density, nodes=nodes_a, weights=weights_a, sigma=float(sigma),
        mean=float(m.mean()), mean_stderr=stderr, n_vectors=n_vectors, n_steps=steps,
        n_hvp=cost.n_hvp, seconds=cost.seconds, seed=seed, curvature=curvature, num_params=n,
        stored_vectors=steps + 1 if reorthogonalize else 2, reorthogonalized=reorthogonalize,
        trace=trace, trace_stderr=trace_stderr,
    )


def _trace(means: np.ndarray, second: np.ndarray, n: int) -> tuple[float, float]:
    """(n * mean, its standard error) from the runs' first and second quadrature moments.

    Run i's mean sum_j tau_j^2 theta_j = e_1^T T e_1 = v_i^T H v_i exactly, so n times it is the
    Hutchinson term z_i^T H z_i of the Rademacher z_i = sqrt(n) v_i, and n * mean is Hutchinson's
    estimate of tr(H) with n_vectors samples: its standard error is n * std(means) /
    sqrt(n_vectors). With one run there is no spread; the second moment sum_j tau_j^2 theta_j^2 =
    v^T H^2 v (exact once there are 2 steps) gives tr(H^2) ~ n v^T H^2 v and the Rademacher
    variance bound Var(z^T H z) = 2 (||H||_F^2 - sum_i H_ii^2) <= 2 tr(H^2), so the standard
    error reported is sqrt(2 n v^T H^2 v) (an estimate of an upper bound).
    """
    trace = n * float(means.mean())
    if len(means) > 1:
        return trace, n * float(means.std(ddof=1)) / math.sqrt(len(means))
    return trace, math.sqrt(2.0 * n * max(float(second[0]), 0.0))


def _check_grid(grid: int | np.ndarray) -> np.ndarray | None:
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        if grid < 2:
            raise LandscapeError(f"grid must have at least 2 points; got {grid}.")
        return None
    arr = np.asarray(grid, dtype=np.float64)
    if arr.ndim != 1 or len(arr) < 2 or not np.all(np.diff(arr) > 0):
        raise LandscapeError(
            "grid must be a number of points (>= 2) or a 1-D increasing array of eigenvalues."
        )
    return arr


def _lanczos_quadrature(matvec, v0: Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and squared first components of `steps` Lanczos steps from v0, with full
    reorthogonalization (steps + 1 stored vectors)."""
    n = v0.numel()
    basis = Basis(n, steps + 1, v0.device, v0.dtype)
    T = torch.zeros(steps + 1, steps + 1, device=v0.device,
                    dtype=accumulation_dtype(v0.device))
    basis.set(0, normalize_(v0))
    eps = torch.finfo(v0.dtype).eps
    size = steps
    betas = torch.zeros(steps, device=v0.device, dtype=T.dtype)
    for j in range(steps):
        w, beta = lanczos_step(matvec, basis, T, j)
        betas[j] = beta
        if j + 1 < steps:
            basis.set(j + 1, w.div_(beta))
        del w
        if j % 10 == 9 or j == steps - 1:  # breakdown test: one host copy every 10 steps
            scale = float(T[: j + 1, : j + 1].abs().max())
            small = (betas[: j + 1] <= 10 * eps * scale).nonzero()
            if len(small):
                size = int(small[0, 0]) + 1
                break
    Tc = T[:size, :size].double().cpu().numpy()
    theta, S = np.linalg.eigh(0.5 * (Tc + Tc.T))
    return theta, S[0] ** 2


def _recurrence_quadrature(matvec, v0: Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The same from the three-term recurrence (2 stored vectors, no reorthogonalization)."""
    eps = torch.finfo(v0.dtype).eps
    alphas: list[float] = []
    betas: list[float] = []
    for alpha, beta in three_term_steps(matvec, v0):
        alphas.append(alpha)
        if beta <= 10 * eps * max(abs(a) for a in alphas) or len(alphas) == steps:
            break
        betas.append(beta)
    theta, S = scipy.linalg.eigh_tridiagonal(np.asarray(alphas), np.asarray(betas))
    return theta, S[0] ** 2
