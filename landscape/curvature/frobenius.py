"""||H||_F, the Frobenius norm of the Hessian, from squared norms of Hessian-vector products."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_int, check_option, check_probe
from .._random import generator, rademacher
from .._reduce import fdot
from .._results import to_jsonable
from ..probe import ParamSelection, Probe
from ._basis import Basis, default_budget, range_basis
from ._common import MatVec, operator, select

FROBENIUS_METHODS = ("hutchinson", "hutch++")


@dataclass(frozen=True)
class FrobeniusResult:
    """||H||_F = sqrt(tr(H^2)), the Frobenius norm of the Hessian (or GGN) at w.

    Attributes:
        estimate: sqrt(squared), the Frobenius norm (sqrt(sum_i lambda_i^2)).
        stderr: its standard error by the delta method, squared_stderr / (2 estimate); 0 when
            computed exactly, NaN with fewer than 2 samples.
        squared: the unbiased estimate of tr(H^2) = ||H||_F^2 (the square root of an unbiased
            estimate is biased low by about stderr^2 / (2 estimate), second order).
        squared_stderr: its standard error (sample standard deviation / sqrt(m)).
        n_hvp: Hessian-vector products spent (never more than asked for).
        seed: seed of the random vectors.
        method: "hutchinson", "hutch++" or "exact" (num_params <= n_hvp: sum_i ||H e_i||^2).
        seconds: wall-clock time.
        sketch_size: Hutch++'s sketch size s (0 otherwise).
        stored_vectors: parameter-sized vectors stored beyond the model, one gradient and one
            product (the memory).
        curvature: "hessian" or "ggn".
    """

    estimate: float
    stderr: float
    squared: float
    squared_stderr: float
    n_hvp: int
    seed: int
    method: str
    seconds: float
    sketch_size: int = 0
    stored_vectors: int = 1
    curvature: str = "hessian"

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def hessian_frobenius(
    probe: Probe,
    *,
    n_hvp: int = 100,
    method: str = "hutch++",
    seed: int = 0,
    curvature: str = "hessian",
    params: ParamSelection = None,
    max_vectors: int | None = None,
    progress: bool = False,
) -> FrobeniusResult:
    """A stochastic estimate of ||H||_F = sqrt(tr(H^2)) at w, from n_hvp products.

    For a random vector z with E[z z^T] = I (Rademacher), E ||H z||^2 = E z^T H^2 z = tr(H^2),
    so tr(H^2) is Hutchinson's estimator applied to H^2, one product H z per sample:

    * "hutchinson": (1/m) sum_i ||H z_i||^2, m = n_hvp; squared_stderr = sample standard
      deviation / sqrt(m).
    * "hutch++" (Meyer, Musco, Musco and Persson 2021, applied to H^2): s = n_hvp // 3
      products sketch Q = orth(H S) (its range holds the dominant eigenvectors of H, which are
      those of H^2); ||H Q||_F^2 = sum_j ||H q_j||^2 is computed exactly with rank(Q) products;
      the remaining m = n_hvp - s - rank(Q) products estimate ||H P||_F^2, P = I - QQ^T, as
      (1/m) sum_i ||H P z_i||^2. Since ||H Q||_F^2 + ||H P||_F^2 = tr(H^2) for every
      orthonormal Q, the estimate is unbiased and its variance is the second part's alone,
      far smaller when a few eigenvalues dominate, as they do for trained networks.

    The norm is the square root: estimate = sqrt(squared), with the delta-method standard
    error stderr = squared_stderr / (2 estimate). (The square root of an unbiased estimate is
    biased low by about stderr^2 / (2 estimate): negligible once stderr << estimate.) When the
    number of parameters n is <= n_hvp the norm is computed exactly as
    sqrt(sum_i ||H e_i||^2) with n products (stderr 0, method "exact").

    Args:
        probe: the model, data and loss.
        n_hvp: the budget of Hessian-vector products (>= 2; >= 3 for "hutch++").
        method: "hutchinson" or "hutch++".
        seed: seeds the random vectors (a CPU generator; moved to the device).
        curvature: "hessian" or "ggn".
        params: restrict to a subset of the probed parameters (the norm of their block).
        max_vectors: memory budget of "hutch++" in parameter-sized vectors beyond the model,
            one gradient and one product: the sketch keeps s = min(n_hvp // 3,
            max_vectors - 1) vectors plus one test vector; products the sketch cannot use go
            to the Hutchinson part. None: n_hvp // 3 + 1 when they fit in 1 GiB, else 8.
            "hutchinson" stores 1 vector.
        progress: show a progress bar over products.

    Returns:
        FrobeniusResult with estimate, stderr, squared, squared_stderr, n_hvp, seed, seconds.

    Raises:
        LandscapeError: bad n_hvp, method, seed, curvature, params or max_vectors.

    Example:
        >>> from landscape import hessian_frobenius
        >>> from landscape.data import quadratic_probe
        >>> probe = quadratic_probe([3.0, 4.0])  # L(w) = 0.5 w^T diag(3, 4) w
        >>> hessian_frobenius(probe, n_hvp=10).estimate  # n = 2 <= 10: exact, sqrt(9 + 16)
        5.0

    References:
        Hutchinson (1989); Meyer, Musco, Musco and Persson, "Hutch++: optimal stochastic trace
        estimation" (SOSA 2021); Wu and Su, "The Implicit Regularization of Dynamical Stability
        in Stochastic Gradient Descent" (ICML 2023), where ||H||_F governs SGD's stability.
    """
    check_probe(probe)
    check_option("method", method, FROBENIUS_METHODS)
    check_int("n_hvp", n_hvp, minimum=3 if method == "hutch++" else 2)
    if max_vectors is not None:
        check_int("max_vectors", max_vectors, minimum=2)
    operator(probe, curvature)
    gen = generator(seed)
    probe = select(probe, params)
    matvec = operator(probe, curvature)
    meter = probe.meter()
    sketch, stored = 0, 1
    with tqdm(total=n_hvp, disable=not progress, desc="frobenius", unit="hvp") as bar:
        def counted(v: Tensor) -> Tensor:
            bar.update(1)
            return matvec(v)

        if probe.num_params <= n_hvp:
            squared, err, used = _exact(counted, probe), 0.0, "exact"
        elif method == "hutchinson":
            terms = _terms(counted, probe, gen, n_hvp)
            squared, err, used = float(terms.mean()), _stderr(terms), method
        else:
            budget = max_vectors if max_vectors is not None else default_budget(
                probe.num_params, probe.dtype, n_hvp // 3 + 1)
            squared, err, sketch = _hutchpp(counted, probe, gen, n_hvp, budget)
            used, stored = method, sketch + 1
    cost = meter.cost()
    norm = math.sqrt(max(squared, 0.0))
    if err == 0.0 or math.isnan(err):
        norm_err = err
    else:
        norm_err = err / (2 * norm) if norm > 0 else math.inf
    return FrobeniusResult(estimate=norm, stderr=norm_err, squared=squared,
                           squared_stderr=err, n_hvp=cost.n_hvp, seed=seed, method=used,
                           seconds=cost.seconds, sketch_size=sketch, stored_vectors=stored,
                           curvature=curvature)


def _squared_norm(x: Tensor) -> float:
    """||x||^2 accumulated in float64."""
    return fdot(x, x)


def _exact(matvec: MatVec, probe: Probe) -> float:
    """sum_i ||H e_i||^2 = tr(H^2), n products."""
    total = 0.0
    e = torch.zeros(probe.num_params, device=probe.device, dtype=probe.dtype)
    for i in range(probe.num_params):
        e[i] = 1
        total += _squared_norm(matvec(e))
        e[i] = 0
    return total


def _terms(matvec: MatVec, probe: Probe, gen: torch.Generator, m: int,
           project: tuple[Basis, int] | None = None) -> Tensor:
    """m samples ||H P z||^2 (P = I - QQ^T when `project` is (Q, its rank), else I)."""
    terms = torch.zeros(m, dtype=torch.float64)
    for i in range(m):
        z = rademacher((probe.num_params,), gen, probe.device, probe.dtype)
        if project is not None:
            basis, rank = project
            basis.subtract(z, basis.dots(z, rank), rank)
        terms[i] = _squared_norm(matvec(z))
    return terms


def _stderr(terms: Tensor) -> float:
    return float(terms.std() / math.sqrt(len(terms))) if len(terms) > 1 else math.nan


def _hutchpp(matvec: MatVec, probe: Probe, gen: torch.Generator, m: int,
             max_vectors: int) -> tuple[float, float, int]:
    """Hutch++ on H^2 with the sketch Q = orth(H S) built by Gram-Schmidt into a `Basis`
    (s + 1 stored vectors). Returns (estimate of tr(H^2), its stderr, s)."""
    s = min(m // 3, max_vectors - 1)
    Q, rank = range_basis(matvec, probe.num_params, s, gen, probe.device, probe.dtype)
    low_rank = sum(_squared_norm(matvec(Q.row(i))) for i in range(rank))
    terms = _terms(matvec, probe, gen, m - s - rank, (Q, rank))
    return low_rank + float(terms.mean()), _stderr(terms), s
