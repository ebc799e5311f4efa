"""Extreme eigenvalues of the Hessian: Lanczos with full reorthogonalization and thick restart.

The Lanczos basis V and the projected matrix T = V^T H V live on the probe's device; only T (a
small matrix) is copied to the host for the stopping test, where its eigenproblem is solved.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np
import scipy.linalg
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_int, check_option, check_positive, check_probe
from .._random import generator, normal
from .._reduce import accumulation_dtype, fdot, fnorm, normalize_
from .._vector_space import dimension
from ..errors import LandscapeError
from ..hvp_memory import heap_slack
from ..probe import ParamSelection, Probe
from ._basis import Basis, default_budget
from ._common import MatVec, exact_check, held_vectors, operator, per_group, products_for, select
from ._common import hessian_into as write_into
from ._eigs import Eigs
from ._ritz import error_bounds, rayleigh_residuals
from .power import power_eigs
from .results import EigenResult, LayerResults

WHICH = ("largest", "smallest")
METHODS = ("lanczos", "power")


def hessian_eigenvalues(
    probe: Probe,
    k: int = 1,
    *,
    which: str = "largest",
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int = 0,
    return_vectors: bool = False,
    method: str = "lanczos",
    curvature: str = "hessian",
    params: ParamSelection = None,
    by: str | dict | None = None,
    max_basis: int | None = None,
    max_vectors: int | None = None,
    progress: bool = False,
    basis_device: str | torch.device | None = None,
) -> EigenResult | LayerResults[EigenResult]:
    """The k largest (or smallest) algebraic eigenvalues of the Hessian of L at w.

    Lanczos with full reorthogonalization (classical Gram-Schmidt, applied twice where the first
    pass leaves less than 0.717 of the product's norm: `Basis.orthogonalize_norm`), started from a
    Gaussian vector drawn from `seed`, thick-restarted (Wu and Simon 2000) when the basis reaches
    `max_basis` vectors. After every step the Ritz pairs (theta_i, y_i) of the projected matrix are
    computed and the run stops when each of the k wanted pairs satisfies

        ||H y_i - theta_i y_i|| <= tol * |theta_i|,

    first with the residual estimated without extra products as beta_m |s_mi| (s_i the
    eigenvector of the projected matrix), then, since that estimate assumes an orthonormal basis
    in exact arithmetic, with the true residual: each wanted Ritz vector y_i is formed and
    multiplied once more, theta_i is replaced by its Rayleigh quotient and r_i = ||H y_i -
    theta_i y_i|| (unit y_i, inner products in float64) is what `residuals` reports and what
    `converged` is decided on. If a true residual misses the tolerance the iteration continues
    (while products are left) from the restarted basis. Near the roundoff level the bound is
    floored at 100 eps max_j |theta_j| (eps of the probe's dtype), so zero eigenvalues can
    converge. `error_bounds` = min(r_i, r_i^2 / gap_i) bounds the eigenvalue error (see
    `EigenResult`); it is usually far below `tol`. Under hvp_method="auto", finite differences
    where measured >= 1.5x faster and accurate to tol / 2 (`landscape.hvp_choice.fd_verdict`),
    the returned pairs checked with exact products (`EigenResult.hvp_method`, `hvp_reason`).

    Args:
        probe: the model, data and loss.
        k: how many eigenvalues (1 <= k <= number of probed parameters).
        which: "largest" (largest algebraic: the sharpest directions) or "smallest" (most
            negative: is it really a minimum?).
        tol: relative residual tolerance (see above).
        max_iter: maximum number of Hessian-vector products, the k of the final residual check
            included (k + 1 at least); None means 1000 for Lanczos and 1000 per eigenvalue for
            power iteration.
        seed: seeds the start vector.
        return_vectors: also return the unit eigenvectors (rows of a (k, num_params) tensor).
        method: "lanczos" or "power" (PyHessian's power iteration with deflation, kept as a
            baseline; it converges to the largest-magnitude eigenvalues, so only
            which="largest" is accepted, and it stops on the same residual rule).
        curvature: "hessian" or "ggn" (the generalized Gauss-Newton matrix, PSD).
        params: restrict to a subset of the probed parameters (their Hessian block); None: all.
        by: None, "layer" (one result per module: the diagonal block of its parameters),
            "parameter" (one per parameter tensor) or a dict of block name -> parameter names
            or glob patterns (`{"attention": "*.attn.*", "mlp": "*.mlp.*"}`: one per block);
            returns a `LayerResults` then.
        max_basis: Lanczos basis size before a restart; None: min(n, max(50, 4k)), within
            `max_vectors`.
        max_vectors: memory budget, in parameter-sized vectors stored beyond the model, one
            gradient and one product (a 64M-parameter float32 model: 256 MB each). The basis
            holds max_vectors - 1 vectors before a thick restart; fewer vectors mean more
            products (about 22 products for the top eigenvalue of a trained network with a
            basis of 40, a few more with 9). For k=1 without `return_vectors`, max_vectors=2
            or 3 uses the three-term recurrence instead: 2 vectors and no restarts, then a
            second pass of as many products with 3 vectors to form the Ritz vector whose true
            residual is checked (its vectors lose orthogonality, which leaves the extreme
            eigenvalue reliable but may cost more products; see `recurrence_eig`). None: the
            full basis (max_basis + 1 vectors) when it fits in 1 GiB, else 8 vectors, or
            fewer so that with what one product holds (the kept gradient graph, measured on
            the first product; `landscape.hvp_memory`) the peak stays within 12 vectors beyond
            a plain gradient's. The vectors are allocated as the basis grows.
            `EigenResult.stored_vectors` reports what was stored, `peak_vectors` the peak.
        progress: show a progress bar over products.
        basis_device: where the Lanczos basis (and the start vector, the Ritz vectors and the
            eigenvectors returned) live: None, the probe's device; "cpu" keeps them in host
            memory (pinned when the probe is on CUDA), so the device holds the model and two
            vectors (the one being multiplied and its product). Each product then moves two
            vectors between host and device, and the orthogonalization (about 4 m n flops for
            a basis of m vectors) runs on the host CPU. The results are the same.

    Returns:
        EigenResult (eigenvalues descending for "largest", ascending for "smallest"), or a
        LayerResults of them with `by`. If the tolerance is not met within `max_iter` products a
        RuntimeWarning is issued and `converged=False` is returned with the current estimates.

    Raises:
        LandscapeError: bad k, tol, max_iter, which, method, curvature, by, max_basis or
            max_vectors (too small for k).

    Example:
        >>> from landscape import hessian_eigenvalues
        >>> from landscape.data import quadratic_probe
        >>> probe = quadratic_probe(range(1, 11))  # L(w) = 0.5 w^T diag(1, ..., 10) w
        >>> hessian_eigenvalues(probe, k=2).eigenvalues.round(6).tolist()
        [10.0, 9.0]

    References:
        Lanczos (1950); Wu and Simon, "Thick-restart Lanczos method for large symmetric eigenvalue
        problems" (SIMAX 2000); Yao et al., "PyHessian" (2020) for the power-iteration baseline.
    """
    check_probe(probe)
    check_int("k", k)
    check_positive("tol", tol)
    check_option("which", which, WHICH)
    check_option("method", method, METHODS)
    if max_iter is not None:
        check_int("max_iter", max_iter)
    if max_basis is not None:
        check_int("max_basis", max_basis, minimum=k + 2)
    if max_vectors is not None:
        check_int("max_vectors", max_vectors, minimum=2)
    if method == "power" and which != "largest":
        raise LandscapeError(
            "method='power' finds the largest-magnitude eigenvalues only; use method='lanczos' "
            "for which='smallest'."
        )
    operator(probe, curvature)  # validate early
    generator(seed)  # validates seed
    probe = select(probe, params)
    home_of = _basis_home(basis_device)

    def estimate(p: Probe) -> EigenResult:
        if k > dimension(p.num_params):
            raise LandscapeError(
                f"k={k} exceeds the number of probed parameters ({p.num_params}); ask for fewer."
            )
        matvec = operator(p, curvature)
        meter = p.meter()
        gen = generator(seed)
        # the start vector is handed over without a name here, so the estimator's copy of it
        # is the only one alive (its memory counts in stored_vectors)
        home, pin = home_of(p)
        with products_for(p, curvature, tol, method == "lanczos") as reason, \
                tqdm(disable=not progress, desc="eigenvalues", unit="hvp") as bar:
            held = held_vectors(p)  # after the first product ("auto" settles it): measured
            v0 = [_on(normal(p.num_params, gen, p.dtype), home, pin)]

            def counted(v: Tensor) -> Tensor:
                bar.update(1)
                return matvec(v).to(home)  # the probe moves v to its own device

            exact = exact_check(p, counted)  # exact products for the true residuals, or None
            if method == "lanczos":
                budget = max_iter if max_iter is not None else 1000
                m, _ = _plan(p, k, return_vectors, max_basis, max_vectors, held)
                if m == 0:
                    v0.clear()

                    def start() -> Tensor:  # the same start vector, for both passes
                        return _on(normal(p.num_params, generator(seed), p.dtype), home, pin)

                    out = recurrence_eig(counted, start, which, tol, budget, exact)
                else:
                    out = lanczos_eigs(counted, v0.pop(), k, which, tol, budget, m, gen,
                                       return_vectors, exact, write_into(p, curvature, home, bar))
            else:
                budget = max_iter if max_iter is not None else 1000 * k
                out = power_eigs(counted, v0.pop(), k, tol, budget, gen)
            used = p.hvp_method_used if curvature == "hessian" else "ggn"
            held = held_vectors(p)  # measured on the first product by now
        cost = meter.cost()
        if not out.converged:
            warnings.warn(
                f"hessian_eigenvalues did not converge to tol={tol} within {budget} products "
                f"(largest relative residual {np.max(out.residuals / np.abs(out.values)):.2g}); "
                "returning the current estimates with converged=False. Raise max_iter or tol.",
                RuntimeWarning, stacklevel=3,
            )
        return EigenResult(
            eigenvalues=out.values, eigenvectors=out.vectors if return_vectors else None,
            stored_vectors=out.n_vectors, hvp_method=used, hvp_reason=reason,
            peak_vectors=(out.n_vectors if home == p.device else 1) + max(held, 0.0),
            residuals=out.residuals, error_bounds=out.bounds, n_hvp=cost.n_hvp,
            converged=out.converged,
            seconds=cost.seconds, which=which, method=method, curvature=curvature, tol=tol,
            seed=seed,
        )

    return per_group(probe, by, estimate)


def _basis_home(basis_device: str | torch.device | None):
    """`home_of(probe) -> (device of the basis, pinned)` for the `basis_device` option."""
    if basis_device is not None:
        try:
            want = torch.device(basis_device)
        except (RuntimeError, TypeError):
            want = None
        if want is None or want.type != "cpu":
            raise LandscapeError(
                f"basis_device must be None (the probe's device) or 'cpu'; got {basis_device!r}.")

    def home_of(p: Probe) -> tuple[torch.device, bool]:
        if basis_device is None:
            return p.device, False
        return torch.device("cpu"), p.device.type == "cuda"

    return home_of


def _on(x: Tensor, device: torch.device, pin: bool) -> Tensor:
    """`x` on `device` (in pinned host memory with `pin`)."""
    return x.pin_memory() if pin else x.to(device)


def _plan(probe: Probe, k: int, return_vectors: bool, max_basis: int | None,
          max_vectors: int | None, held: float = 0.0) -> tuple[int, int]:
    """(basis size m before a restart, 0 for the three-term recurrence; vectors stored), the
    default budget leaving room for the `held` vectors of the product and the free heap pages
    resident memory may hold beyond the tensors (`hvp_memory.heap_slack`)."""
    n = dimension(probe.num_params)
    wanted = min(n, max_basis or max(50, 4 * k))
    slack = held + heap_slack(probe)
    budget = max_vectors if max_vectors is not None else default_budget(n, probe.dtype,
                                                                         wanted + 1, slack)
    m = min(wanted, budget - 1)
    if m < min(k + 2, n):
        if k == 1 and not return_vectors:
            return 0, 2
        raise LandscapeError(
            f"max_vectors={budget} leaves a Lanczos basis of {m} vectors, too few for k={k} "
            f"(it needs k + 2 = {k + 2} plus one); raise max_vectors to at least {k + 3} or "
            "ask for fewer eigenvalues."
        )
    return m, m + 1


def lanczos_step(matvec: MatVec, basis: Basis, T: Tensor, j: int,
                 into: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Expand the basis by one product: H rows[j], orthogonalized against rows[:j+1].

    Records column j of the projected matrix (T[:j+1, j] = V[:j+1]^T H V[j], symmetric) and
    T[j+1, j] = beta = the norm of the remainder. Returns (remainder, beta), both on device.
    `into(v, out)`: H v written into out (rows[j+1]: no new vector and its page faults).
    """
    w = matvec(basis.row(j)) if into is None else into(basis.row(j), basis.slot(j + 1))
    h, beta = basis.orthogonalize_norm(w, j + 1)
    T[: j + 1, j] = h
    T[j, : j + 1] = h
    T[j + 1, j] = beta
    T[j, j + 1] = beta
    return w, beta


def _random_orthogonal(basis: Basis, size: int, gen: torch.Generator) -> Tensor:
    """A unit vector orthogonal to rows[:size] (to continue after an invariant subspace)."""
    r = normal(basis.n, gen, basis.dtype).to(basis.device)
    basis.orthogonalize(r, size)
    return normalize_(r)


def _wanted(theta: np.ndarray, count: int, which: str) -> np.ndarray:
    """Indices of the `count` wanted Ritz values (theta ascending from eigh)."""
    idx = np.arange(len(theta))
    return idx[::-1][:count] if which == "largest" else idx[:count]


def _stop_test(theta: np.ndarray, S: np.ndarray, b: float, k: int, which: str, tol: float,
               eps: float) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """(wanted indices, their residual estimates b |s_mi|, all converged, breakdown)."""
    scale = float(np.max(np.abs(theta))) if len(theta) else 0.0
    want = _wanted(theta, min(k, len(theta)), which)
    res = b * np.abs(S[-1, want])
    breakdown = b <= 10 * eps * max(scale, 1e-300)
    if breakdown:
        res = np.zeros_like(res)
    ok = bool(np.all(res <= np.maximum(tol * np.abs(theta[want]), 100 * eps * scale)))
    return want, res, ok, breakdown


def _restart(basis: Basis, T: Tensor, theta: np.ndarray, S: np.ndarray, b: float,
             keep: np.ndarray, size: int, next_row: bool) -> int:
    """Thick restart in place: rows[:p] become the Ritz vectors of `keep` (p = len(keep)), row p
    the last Lanczos vector (row `size`, when `next_row`), T their projection. Returns p."""
    p = len(keep)
    basis.transform_in_place(torch.as_tensor(S[:, keep], device=basis.device, dtype=basis.dtype))
    if next_row and p < size:
        basis.set(p, basis.row(size))
    T.zero_()
    T[:p, :p] = torch.diag(torch.as_tensor(theta[keep], device=T.device, dtype=T.dtype))
    coupling = torch.as_tensor(b * S[-1, keep], device=T.device, dtype=T.dtype)
    T[p, :p] = coupling
    T[:p, p] = coupling
    return p


def lanczos_eigs(
    matvec: MatVec, v0: Tensor, k: int, which: str, tol: float, max_iter: int, max_basis: int,
    gen: torch.Generator, return_vectors: bool = True, check: MatVec | None = None,
    into: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Eigs:
    """Thick-restart Lanczos for the k extreme eigenpairs of a symmetric operator (see above).

    When the residual estimates pass (or the budget is spent) the basis is restarted onto the
    wanted Ritz vectors and each is checked with one product (`rayleigh_residuals`); if a true
    residual misses the tolerance and products are left, the iteration goes on from there,
    trusting the estimates only by the factor they were off. At most max_iter products, the
    checks included (k + 1 when max_iter is smaller). Stores at most max_basis + 1 vectors
    (allocated as the basis grows) besides the product. `check`: the operator of the checks
    (exact products where `matvec` is a finite difference); once a check fails, `matvec` is
    replaced by it for the rest of the run. `into`: `matvec` writing into a given vector.
    """
    check = matvec if check is None else check
    n, full = v0.numel(), dimension(v0.numel())  # full: N when v0 is a rank's shard
    m = min(max_basis, full)
    eps = torch.finfo(v0.dtype).eps
    basis = Basis(n, m + 1, v0.device, v0.dtype, pin=v0.is_pinned())
    T = torch.zeros(m + 1, m + 1, device=v0.device, dtype=accumulation_dtype(v0.device))
    basis.set(0, normalize_(v0))
    del v0
    limit = max(1, max_iter - k)  # products for the iteration; the final check takes k more
    j, n_mv, trust = 0, 0, 1.0
    while True:
        w, beta = lanczos_step(matvec, basis, T, j, into)
        n_mv += 1
        size = j + 1
        # the stopping test: the only host copy of the loop (the small projected matrix)
        Tc = T[: size + 1, : size + 1].detach().double().cpu().numpy()
        b = float(Tc[size, size - 1])
        Tc = Tc[:size, :size]
        theta, S = np.linalg.eigh(0.5 * (Tc + Tc.T))
        want, res, ok, breakdown = _stop_test(theta, S, b, k, which, tol * trust, eps)
        invariant = breakdown or size >= full
        if (size >= k and (ok or invariant)) or n_mv >= limit:
            if not breakdown:
                basis.set(size, w.div_(beta))
            del w
            p = size if size <= k else min(size - 1, k + (size - k) // 2)
            j = _restart(basis, T, theta, S, b, _wanted(theta, p, which), size, not breakdown)
            values, true_res = rayleigh_residuals(check, [basis.row(i) for i in range(len(want))])
            n_mv += len(want)
            scale = max(float(np.max(np.abs(theta))), float(np.max(np.abs(values))))
            ok = size >= k and bool(np.all(true_res <= np.maximum(tol * np.abs(values),
                                                                  100 * eps * scale)))
            if ok or invariant or n_mv + 1 + k > max_iter:
                rest = np.setdiff1d(np.arange(len(theta)), want)
                bounds = error_bounds(values, true_res, theta[rest], b * np.abs(S[-1, rest]))
                vectors = None
                if return_vectors:
                    vectors = torch.stack([basis.row(i) for i in range(len(want))])
                    for v in vectors:
                        normalize_(v)
                return Eigs(values, true_res, vectors, ok, n_mv, basis.allocated, bounds)
            if matvec is not check:  # finite differences were not accurate enough: exact on
                matvec, into = check, None
                continue
            # the estimates passed but the vectors did not: believe them only that far
            trust = min(trust, float(np.min(res / np.maximum(true_res, 1e-300))))
            continue
        if breakdown:  # invariant subspace with fewer than k vectors: continue orthogonally
            T[size, size - 1] = 0
            T[size - 1, size] = 0
            basis.set(size, _random_orthogonal(basis, size, gen))
        else:
            basis.set(size, w.div_(beta))
        del w
        if size < m:
            j = size
            continue
        # thick restart: keep the wanted Ritz vectors and their nearest neighbours
        p = min(m - 1, k + (m - k) // 2)
        j = _restart(basis, T, theta, S, b, _wanted(theta, p, which), m, True)


def three_term_steps(matvec: MatVec, v0: Tensor,
                     on_vector: Callable[[Tensor], None] | None = None,
                     ) -> Iterator[tuple[float, float]]:
    """(alpha_j, beta_j) of the Lanczos three-term recurrence from v0, one product a step,
    storing two vectors (v0 is normalized in place: the caller should hold no other copy).
    `on_vector(v_j)` is called with each Lanczos vector before its product.

    beta_j is the norm of the remainder after step j (its next off-diagonal). Each step is
    orthogonalized once more against the current vector, for stability; nothing else is
    reorthogonalized. The caller stops iterating (at the latest when beta_j is ~0).
    """
    v = normalize_(v0)
    del v0
    v_prev: Tensor | None = None
    beta_prev = 0.0
    while True:
        if on_vector is not None:
            on_vector(v)
        w = matvec(v)
        alpha = fdot(v, w)
        w.sub_(v, alpha=alpha)
        if v_prev is not None:
            w.sub_(v_prev, alpha=beta_prev)
        correction = fdot(v, w)
        w.sub_(v, alpha=correction)
        beta = fnorm(w)
        yield alpha + correction, beta
        v_prev, v, beta_prev = v, w.div_(beta), beta
        del w


def recurrence_eig(
    matvec: MatVec, start: Callable[[], Tensor], which: str, tol: float, max_iter: int,
    check: MatVec | None = None,
) -> Eigs:
    """The extreme eigenvalue by the Lanczos three-term recurrence, storing two vectors, then
    a second pass that forms its Ritz vector (three vectors) for the true residual.

    Without reorthogonalization the Lanczos vectors lose orthogonality once a Ritz value
    converges, and copies ("ghosts") of converged eigenvalues appear; a converged Ritz value and
    its residual estimate beta |s_mi| stay reliable in exact arithmetic (Paige 1980). The first
    pass stops when a Ritz value equal to the extreme one within the tolerance has an estimated
    residual within it (a ghost copy next to it may not have converged yet). The second pass
    repeats the recurrence from the same start vector (`start()` must return it again) and
    accumulates y = sum_j s_j v_j; the returned value is y's Rayleigh quotient and the residual
    ||H y - theta y|| / ||y|| is computed with one more product, so converged is decided on the
    vector, at 2 m + 1 products for m steps (the first pass gets (max_iter - 1) // 2).
    """
    v0 = start()
    eps = torch.finfo(v0.dtype).eps
    n = dimension(v0.numel())
    limit = max(1, (max_iter - 1) // 2)
    alphas: list[float] = []
    betas: list[float] = []
    steps = three_term_steps(matvec, v0)
    del v0
    for alpha, beta in steps:
        alphas.append(alpha)
        theta, S = scipy.linalg.eigh_tridiagonal(np.asarray(alphas), np.asarray(betas))
        want, res, ok, breakdown = _stop_test(theta, S, beta, 1, which, tol, eps)
        if not ok and not breakdown:
            # Ghost copies of a converged extreme eigenvalue appear as Ritz values next to it
            # whose own residuals are still large; the converged copy is the answer.
            scale = float(np.max(np.abs(theta)))
            bound = np.maximum(tol * np.abs(theta), 100 * eps * scale)
            all_res = beta * np.abs(S[-1])
            close = np.abs(theta - theta[want[0]]) <= bound
            good = np.flatnonzero(close & (all_res <= bound))
            if len(good):
                want, ok = good[:1], True
        if ok or breakdown or len(alphas) >= limit or len(alphas) >= n:
            break
        betas.append(beta)
    steps.close()  # frees the recurrence's vectors
    coeffs = S[:, want[0]]
    state: dict = {"j": 0, "y": None}

    def accumulate(v: Tensor) -> None:  # y += s_j v_j
        if state["y"] is None:
            state["y"] = torch.zeros_like(v)
        if state["j"] < len(coeffs):
            state["y"].add_(v, alpha=float(coeffs[state["j"]]))
        state["j"] += 1

    second = three_term_steps(matvec, start(), accumulate)
    for _ in range(len(alphas)):
        next(second)
    second.close()
    values, true_res = rayleigh_residuals(check or matvec, [state["y"]])
    scale = max(float(np.max(np.abs(theta))), abs(float(values[0])))
    ok = bool(true_res[0] <= max(tol * abs(values[0]), 100 * eps * scale))
    rest = np.setdiff1d(np.arange(len(theta)), want)
    bounds = error_bounds(values, true_res, theta[rest], beta * np.abs(S[-1, rest]))
    return Eigs(values, true_res, None, ok, 2 * len(alphas) + 1, 3, bounds)
