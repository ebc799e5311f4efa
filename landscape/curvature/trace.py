"""tr(H) by Hutchinson, Hutch++ and XTrace, each with an honest standard error."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_int, check_option, check_positive, check_probe
from .._random import generator, rademacher
from .._reduce import dot, fdot, gram
from .._vector_space import dimension, require_whole
from ..errors import LandscapeError
from ..probe import ParamSelection, Probe
from ._basis import Basis, default_budget, range_basis
from ._common import MatVec, operator, per_group, select
from .results import LayerResults, TraceResult

TRACE_METHODS = ("hutchinson", "hutch++", "xtrace")
_MIN_SAMPLES = 10  # Hutchinson samples before the rtol test may stop (a stable stderr)


def hessian_trace(
    probe: Probe,
    *,
    n_hvp: int = 100,
    method: str = "hutch++",
    seed: int = 0,
    rtol: float | None = None,
    curvature: str = "hessian",
    params: ParamSelection = None,
    by: str | dict | None = None,
    max_vectors: int | None = None,
    progress: bool = False,
) -> TraceResult | LayerResults[TraceResult]:
    """A stochastic estimate of tr(H), the trace of the Hessian of L at w, from n_hvp products.

    * "hutchinson" (Hutchinson 1989): (1/m) sum_i z_i^T H z_i with Rademacher z_i, m = n_hvp;
      stderr = sample standard deviation / sqrt(m).
    * "hutch++" (Meyer, Musco, Musco and Persson 2021): s = n_hvp // 3 products sketch
      Q = orth(H S) (Gram-Schmidt, dropping directions in which H S is rank deficient);
      tr(Q^T H Q) is computed exactly with rank(Q) more; the remaining m = n_hvp - s - rank(Q)
      go to Hutchinson on (I - QQ^T) H (I - QQ^T). Since tr(Q^T H Q) + tr(P H P) = tr(H) for
      every Q, the estimator is unbiased and its whole variance is the Hutchinson part's:
      stderr = sample std of those m terms / sqrt(m).
    * "xtrace" (Epperly, Tropp and Webber 2024): s = n_hvp // 2 Rademacher vectors, exchangeable
      leave-one-out combination of the low-rank trace and Hutchinson; stderr is the paper's
      estimate, the standard deviation of the s leave-one-out estimates / sqrt(s).

    All are unbiased. Hutch++ and XTrace have far less variance when the spectrum decays, as
    Hessian spectra of trained networks do. At most n_hvp products are used; when the number of
    parameters n is <= n_hvp the trace is computed exactly as sum_i e_i^T H e_i (n products,
    stderr 0, method "exact").

    Args:
        probe: the model, data and loss.
        n_hvp: the budget of Hessian-vector products (>= 2; >= 3 for "hutch++").
        method: "hutchinson", "hutch++" or "xtrace".
        seed: seeds the random vectors (a CPU generator; the vectors are moved to the device).
        rtol: stop early once stderr <= rtol * |estimate| (checked after at least 10 Hutchinson
            samples; Hutch++ checks during its Hutchinson phase). None: use the full budget.
            Not available for "xtrace", whose estimate needs all its vectors at once.
        curvature: "hessian" or "ggn".
        params: restrict to a subset of the probed parameters (the trace of their block).
        by: None, "layer", "parameter" or a dict of block name -> parameter names or glob
            patterns: one estimate per group (n_hvp products each).
        max_vectors: memory budget of "hutch++", in parameter-sized vectors stored beyond the
            model, one gradient and one product: its sketch has s = min(n_hvp // 3,
            max_vectors - 1) vectors (plus one test vector); products the sketch cannot use
            go to the Hutchinson part, so a small budget costs accuracy on decaying spectra,
            never more products. None: n_hvp // 3 + 1 when they fit in 1 GiB, else 8.
            Hutchinson stores 1 vector; XTrace stores about 3 n_hvp / 2 (no budget: use
            "hutch++" on large models).
        progress: show a progress bar.

    Returns:
        TraceResult (or LayerResults of them) with estimate, stderr, n_hvp, seconds.

    Raises:
        LandscapeError: bad n_hvp, method, rtol, curvature, by, or rtol with "xtrace".

    Example:
        >>> from landscape import hessian_trace
        >>> from landscape.data import quadratic_probe
        >>> probe = quadratic_probe(range(1, 11))  # L(w) = 0.5 w^T diag(1, ..., 10) w
        >>> hessian_trace(probe, n_hvp=30).estimate  # n = 10 <= 30: exact
        55.0

    References:
        Hutchinson (1989); Meyer, Musco, Musco, Persson, "Hutch++: optimal stochastic trace
        estimation" (SOSA 2021); Epperly, Tropp, Webber, "XTrace: making the most of every
        sample in stochastic trace estimation" (SIMAX 2024).
    """
    check_probe(probe)
    check_option("method", method, TRACE_METHODS)
    check_int("n_hvp", n_hvp, minimum=3 if method == "hutch++" else 2)
    if max_vectors is not None:
        check_int("max_vectors", max_vectors, minimum=2)
    if rtol is not None:
        check_positive("rtol", rtol)
        if method == "xtrace":
            raise LandscapeError(
                "rtol is not available with method='xtrace' (it uses all its vectors at once); "
                "use method='hutch++' or 'hutchinson' for early stopping, or drop rtol."
            )
    operator(probe, curvature)
    generator(seed)
    probe = select(probe, params)

    def estimate(p: Probe) -> TraceResult:
        matvec = operator(p, curvature)
        gen = generator(seed)
        meter = p.meter()
        with tqdm(total=n_hvp, disable=not progress, desc="trace", unit="hvp") as bar:
            def counted(v: Tensor) -> Tensor:
                bar.update(1)
                return matvec(v)

            sketch, stored = 0, 1
            if dimension(p.num_params) <= n_hvp:
                value, err, used, early = _exact(counted, p), 0.0, "exact", False
            elif method == "hutchinson":
                value, err, early = _hutchinson(counted, p, gen, n_hvp, rtol)
                used = method
            elif method == "hutch++":
                budget = max_vectors if max_vectors is not None else default_budget(
                    dimension(p.num_params), p.dtype, n_hvp // 3 + 1)  # the same on all ranks
                value, err, early, sketch = _hutchpp(counted, p, gen, n_hvp, rtol, budget)
                used, stored = method, sketch + 1
            else:
                value, err = _xtrace(counted, p, gen, n_hvp)
                used, early = method, False
        cost = meter.cost()
        return TraceResult(estimate=value, stderr=err, n_hvp=cost.n_hvp, method=used,
                           seconds=cost.seconds, stopped_early=early, curvature=curvature,
                           seed=seed, rtol=rtol, sketch_size=sketch, stored_vectors=stored)

    return per_group(probe, by, estimate)


def _exact(matvec: MatVec, probe: Probe) -> float:
    require_whole("the exact trace (num_params <= n_hvp)")
    total = torch.zeros((), device=probe.device, dtype=torch.float64)
    e = torch.zeros(probe.num_params, device=probe.device, dtype=probe.dtype)
    for i in range(probe.num_params):
        e[i] = 1
        total += matvec(e)[i].double()
        e[i] = 0
    return float(total)


def _sample_terms(
    matvec: MatVec, probe: Probe, gen: torch.Generator, m: int, rtol: float | None,
    offset: Tensor | float = 0.0, project: tuple[Basis, int] | None = None,
) -> tuple[Tensor, bool]:
    """Up to m Hutchinson terms (Pz)^T H (Pz), P = I - QQ^T when `project` is (Q, its rank);
    may stop early."""
    terms = torch.zeros(m, device=probe.device, dtype=torch.float64)
    for i in range(m):
        z = rademacher((probe.num_params,), gen, probe.device, probe.dtype)
        if project is not None:
            basis, rank = project
            basis.subtract(z, basis.dots(z, rank), rank)
        terms[i] = dot(z, matvec(z))
        count = i + 1
        if rtol is not None and count >= _MIN_SAMPLES and count < m:
            head = terms[:count]
            err = float(head.std() / math.sqrt(count))
            if err <= rtol * abs(float(offset + head.mean())):
                return head, True
    return terms, False


def _stderr(terms: Tensor) -> float:
    return float(terms.std() / math.sqrt(len(terms))) if len(terms) > 1 else math.nan


def _hutchinson(matvec, probe, gen, m, rtol) -> tuple[float, float, bool]:
    terms, early = _sample_terms(matvec, probe, gen, m, rtol)
    return float(terms.mean()), _stderr(terms), early


def _hutchpp(matvec, probe, gen, m, rtol, max_vectors) -> tuple[float, float, bool, int]:
    """Hutch++ with the sketch orthonormalized as it is built (Gram-Schmidt into a
    `Basis`), so it stores s + 1 vectors: the s sketch directions and one test vector.
    Returns (estimate, stderr, stopped early, s)."""
    s = min(m // 3, max_vectors - 1)
    Q, rank = range_basis(matvec, probe.num_params, s, gen, probe.device, probe.dtype)
    low_rank = sum(fdot(Q.row(i), matvec(Q.row(i))) for i in range(rank))
    # the products the sketch did not need go to the Hutchinson part
    terms, early = _sample_terms(matvec, probe, gen, m - s - rank, rtol, low_rank, (Q, rank))
    return low_rank + float(terms.mean()), _stderr(terms), early, s


def _xtrace(matvec, probe, gen, m) -> tuple[float, float]:
    """XTrace: trace estimates with each test vector left out of the basis in turn, averaged.

    With Omega (n x s) the test vectors, Y = H Omega = QR, and S the columns of R^{-T}
    normalized, Q_i Q_i^T = Q (I - s_i s_i^T) Q^T spans the range of Y without column i. The
    i-th estimate is tr(Q_i^T H Q_i) + omega_i^T P_i H P_i omega_i (P_i = I - Q_i Q_i^T), all
    expressed through s x s matrices after the 2s products.
    """
    require_whole("method='xtrace'")
    s = m // 2
    omega = rademacher((probe.num_params, s), gen, probe.device, probe.dtype)
    Y = torch.stack([matvec(omega[:, i]) for i in range(s)], dim=1)
    Q, R = torch.linalg.qr(Y)
    HQ = torch.stack([matvec(Q[:, i]) for i in range(s)], dim=1)
    # the small matrices, inner products over n accumulated in float64, then on the host
    M = gram(Q, HQ).cpu()
    M = 0.5 * (M + M.T)
    W = gram(Q, omega).cpu()                  # Q^T omega
    Z = gram(HQ, omega).cpu()                 # (H Q)^T omega
    diag_oy = torch.stack([dot(omega[:, i], Y[:, i]) for i in range(s)]).cpu()  # w_i^T H w_i
    R = R.double().cpu()
    Rinv_t = torch.linalg.inv(R.T)
    S = Rinv_t / torch.linalg.vector_norm(Rinv_t, dim=0)
    tr_q = torch.trace(M)
    est = torch.zeros(s, dtype=torch.float64)
    for i in range(s):
        si, c = S[:, i], W[:, i]
        d = c - (si @ c) * si                     # (I - s s^T) Q^T omega
        e = R[:, i] - M @ d                       # Q^T (H omega - H Q d)
        e_def = e - (si @ e) * si
        hutch = diag_oy[i] - Z[:, i] @ d - c @ e_def
        est[i] = tr_q - si @ M @ si + hutch
    if not torch.isfinite(est).all():
        raise LandscapeError(
            "XTrace failed: the sketch H Omega is rank deficient (the curvature matrix has rank "
            f"below {s}); use method='hutch++' or fewer products."
        )
    return float(est.mean()), float(est.std() / math.sqrt(s))
