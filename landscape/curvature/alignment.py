"""Hessian and gradient alignment of one model across two data sets (domains).

`hessian_alignment(probe_a, probe_b)` measures how differently two domains curve the loss at
the same weights: the spectral norm of the difference of their Hessians (by Lanczos on H_a - H_b,
both ends of its spectrum), the top eigenvalues of each, and the distance and cosine of their
gradients.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_int, check_positive, check_probe
from .._random import generator
from .._reduce import accumulation_dtype, fdot, fnorm, normalize_
from .._results import to_jsonable
from ..errors import LandscapeError
from ..probe import ParamSelection, Probe
from ._basis import Basis, default_budget
from ._common import MatVec, select
from .lanczos import hessian_eigenvalues, lanczos_step
from .results import EigenResult


@dataclass(frozen=True)
class AlignmentResult:
    """Hessian and gradient alignment of one model on two data sets, a and b.

    Attributes:
        hessian_distance: ||H_a - H_b||_2, the spectral norm of the difference (its largest
            absolute eigenvalue, max(|difference_largest|, |difference_smallest|)).
        hessian_distance_residual: ||D v - theta v|| of the Ritz pair that gives it (D = H_a -
            H_b, v a unit vector, from one product on v): some eigenvalue of D lies within it.
        difference_largest, difference_smallest: the largest and smallest algebraic eigenvalues
            of H_a - H_b (where a is sharper than b, and where b is sharper than a).
        difference_residuals: shape (2,), the residuals of those two Ritz pairs.
        eigenvalues_a, eigenvalues_b: shape (k,), the k largest eigenvalues of H_a and of H_b
            (descending), with residuals_a, residuals_b.
        gradient_distance: ||g_a - g_b|| (Euclidean, exact up to rounding).
        gradient_cosine: g_a . g_b / (||g_a|| ||g_b||) (NaN when a gradient is zero).
        gradient_norm_a, gradient_norm_b: ||g_a||, ||g_b||.
        converged: the difference's two ends and both top-k runs met their tolerances.
        params: names of the parameters measured (the Hessian block and gradient entries).
        n_samples_a, n_samples_b: samples in each data set.
        n_hvp: Hessian-vector products, all together (a product with H_a - H_b is two; each
            is over that probe's own data); n_gradient: full gradients (two); seconds: time.
        k, tol, seed: the settings.
    """

    hessian_distance: float
    hessian_distance_residual: float
    difference_largest: float
    difference_smallest: float
    difference_residuals: np.ndarray
    eigenvalues_a: np.ndarray
    eigenvalues_b: np.ndarray
    residuals_a: np.ndarray
    residuals_b: np.ndarray
    gradient_distance: float
    gradient_cosine: float
    gradient_norm_a: float
    gradient_norm_b: float
    converged: bool
    params: list[str]
    n_samples_a: int
    n_samples_b: int
    n_hvp: int
    n_gradient: int
    seconds: float
    k: int = 1
    tol: float = 1e-4
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def to_markdown(self, names: tuple[str, str] = ("a", "b")) -> str:
        """A two-column Markdown table of the numbers (the caller prints it)."""
        a, b = names
        rows = [
            ("spectral norm of H_a - H_b",
             f"{self.hessian_distance:.5g} (± {self.hessian_distance_residual:.2g})"),
            ("largest, smallest eigenvalue of H_a - H_b",
             f"{self.difference_largest:.5g}, {self.difference_smallest:.5g}"),
            (f"top eigenvalue of H on {a}", f"{self.eigenvalues_a[0]:.5g}"),
            (f"top eigenvalue of H on {b}", f"{self.eigenvalues_b[0]:.5g}"),
            ("norm of g_a - g_b", f"{self.gradient_distance:.5g}"),
            ("cos(g_a, g_b)", f"{self.gradient_cosine:.4f}"),
            ("norms of g_a and g_b", f"{self.gradient_norm_a:.4g}, {self.gradient_norm_b:.4g}"),
        ]
        lines = [f"| measure (a = {a}, b = {b}) | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        lines.append(f"| cost | {self.n_hvp} HVP, {self.n_gradient} gradients, "
                     f"{self.seconds:.2f} s |")
        return "\n".join(lines)


def hessian_alignment(
    probe_a: Probe,
    probe_b: Probe,
    params: ParamSelection = None,
    k: int = 1,
    *,
    tol: float = 1e-4,
    max_iter: int = 300,
    seed: int = 0,
    max_vectors: int | None = None,
    progress: bool = False,
) -> AlignmentResult:
    """How differently two data sets curve the loss of one model: ||H_a - H_b||_2 and gradients.

    With H_a, g_a the Hessian and gradient of the mean loss over data set a at the weights w
    (and H_b, g_b over b), this returns

    * ||H_a - H_b||_2 = max(|lambda_max(D)|, |lambda_min(D)|), D = H_a - H_b, by one Lanczos
      run on D (one product D v = H_a v - H_b v costs two Hessian-vector products) with full
      reorthogonalization, stopped when the Ritz pairs at both ends of the spectrum have
      residual estimates <= tol * max(|theta_max|, |theta_min|); each end's residual is then
      recomputed from a product on its Ritz vector, and some eigenvalue of D lies within it;
    * the k largest eigenvalues of H_a and of H_b (`hessian_eigenvalues` with `tol`);
    * ||g_a - g_b|| and cos(g_a, g_b), exact.

    Hemati et al. (2023) bound the transferability of a classifier between domains by the
    spectral norm of the difference of the domains' classifier-head Hessians, with the gradient
    difference; matching both (their HGP and Hutchinson penalties) improves out-of-domain
    accuracy. Pass `params` to measure the head only, as in the paper.

    Args:
        probe_a, probe_b: probes of the same model (the same weights) on the two data sets.
        params: the parameters to compare (their Hessian block and gradient entries): names,
            module prefixes or a predicate as for `Probe(params=...)`, e.g. "fc" for the last
            layer (the classifier head); None: every parameter both probes measure.
        k: top eigenvalues reported for each of H_a and H_b.
        tol: relative residual tolerance (of the difference: relative to its spectral norm).
        max_iter: products with D = H_a - H_b at most (each two Hessian-vector products).
        seed: seeds the Lanczos start vectors.
        max_vectors: memory budget of the Lanczos run on D in parameter-sized vectors (it
            stores one per step, without restarts); None: max_iter + 1 when they fit in 1 GiB,
            else 8. A run that fills its budget stops there, converged=False.
        progress: show a progress bar over products with D.

    Returns:
        AlignmentResult: `hessian_distance`, `gradient_distance`, `gradient_cosine`, the ends
        of the difference's spectrum, each probe's top eigenvalues, residuals and cost.
        Warns (RuntimeWarning) when a Lanczos run did not converge.

    Raises:
        LandscapeError: probes of different weights or parameters, bad params, k, tol,
            max_iter or max_vectors.

    References:
        Hemati, Zhang, Esmaeili, Tavakoli and Zhang, "Understanding Hessian Alignment for
        Domain Generalization" (ICCV 2023).
    """
    check_probe(probe_a)
    check_probe(probe_b)
    check_int("k", k)
    check_positive("tol", tol)
    check_int("max_iter", max_iter)
    if max_vectors is not None:
        check_int("max_vectors", max_vectors, minimum=3)
    gen = generator(seed)
    t0 = time.perf_counter()
    pa, pb = select(probe_a, params), select(probe_b, params)
    _check_same_weights(pa, pb)
    if k > pa.num_params:
        raise LandscapeError(f"k={k} exceeds the number of compared parameters "
                             f"({pa.num_params}); ask for fewer.")
    meters = pa.meter(), pb.meter()
    ga, gb = pa.gradient(), pb.gradient()
    eig = dict(k=k, tol=tol, seed=seed)
    top_a = cast(EigenResult, hessian_eigenvalues(pa, **eig))  # by=None: one result
    top_b = cast(EigenResult, hessian_eigenvalues(pb, **eig))

    def difference(v: Tensor) -> Tensor:
        return pa.hvp(v) - pb.hvp(v)

    n = pa.num_params
    budget = max_vectors if max_vectors is not None else default_budget(n, pa.dtype,
                                                                        max_iter + 1)
    v0 = torch.randn(n, generator=gen, dtype=pa.dtype).to(pa.device)
    with tqdm(total=max_iter, disable=not progress, desc="H_a - H_b", unit="product") as bar:
        def counted(v: Tensor) -> Tensor:
            bar.update(1)
            return difference(v)

        ends = _both_ends(counted, v0, tol, min(max_iter, budget - 1))
    if not ends.converged:
        warnings.warn(f"hessian_alignment: Lanczos on H_a - H_b did not converge to tol={tol} "
                      f"within {ends.n_steps} products; raise max_iter (or max_vectors).",
                      RuntimeWarning, stacklevel=2)
    big = int(np.argmax(np.abs(ends.values)))
    na, nb = fnorm(ga), fnorm(gb)
    cosine = fdot(ga, gb) / (na * nb) if na > 0 and nb > 0 else math.nan
    costs = meters[0].cost(), meters[1].cost()
    return AlignmentResult(
        hessian_distance=float(abs(ends.values[big])),
        hessian_distance_residual=float(ends.residuals[big]),
        difference_largest=float(ends.values[1]), difference_smallest=float(ends.values[0]),
        difference_residuals=ends.residuals[::-1].copy(),
        eigenvalues_a=top_a.eigenvalues, eigenvalues_b=top_b.eigenvalues,
        residuals_a=top_a.residuals, residuals_b=top_b.residuals,
        gradient_distance=fnorm(ga - gb), gradient_cosine=cosine,
        gradient_norm_a=na, gradient_norm_b=nb,
        converged=ends.converged and top_a.converged and top_b.converged,
        params=list(pa.param_names), n_samples_a=pa.n_samples, n_samples_b=pb.n_samples,
        n_hvp=costs[0].n_hvp + costs[1].n_hvp, n_gradient=2,
        seconds=time.perf_counter() - t0, k=k, tol=tol, seed=seed,
    )


def _check_same_weights(pa: Probe, pb: Probe) -> None:
    """Raise unless the two probes measure the same parameters at the same values."""
    if pa.param_names != pb.param_names:
        raise LandscapeError(
            f"probe_a and probe_b measure different parameters ({pa.param_names} vs "
            f"{pb.param_names}); build both probes on one model with the same params=."
        )
    same = all(p is q or (p.shape == q.shape and torch.equal(p.detach().cpu(), q.detach().cpu()))
               for p, q in zip(pa.params, pb.params))
    if not same:
        raise LandscapeError(
            "probe_a and probe_b hold different weights; hessian_alignment compares one model "
            "on two data sets: build both probes on the same model (Probe(model, data_a) and "
            "Probe(model, data_b))."
        )


@dataclass
class _Ends:
    values: np.ndarray  # (smallest, largest) Ritz values of D
    residuals: np.ndarray  # their residuals ||D v - theta v||, each from a product on v
    converged: bool
    n_steps: int


def _both_ends(matvec: MatVec, v0: Tensor, tol: float, steps: int) -> _Ends:
    """Lanczos with full reorthogonalization on a symmetric operator D until the Ritz pairs at
    both ends have residual estimates beta |s_mi| <= tol * max |theta| (or an invariant
    subspace, or `steps` products); then each end's residual is measured with one product."""
    n = v0.numel()
    steps = min(steps, n)
    eps = torch.finfo(v0.dtype).eps
    basis = Basis(n, steps + 1, v0.device, v0.dtype)
    T = torch.zeros(steps + 1, steps + 1, device=v0.device, dtype=accumulation_dtype(v0.device))
    basis.set(0, normalize_(v0))
    converged = False
    for j in range(steps):
        w, beta = lanczos_step(matvec, basis, T, j)
        size = j + 1
        Tc = T[:size, :size].detach().double().cpu().numpy()
        theta, S = np.linalg.eigh(0.5 * (Tc + Tc.T))
        b = float(beta)
        scale = max(float(np.max(np.abs(theta))), 1e-300)
        estimates = b * np.abs(S[-1, [0, -1]])
        breakdown = b <= 10 * eps * scale
        converged = breakdown or size >= n or bool(np.all(estimates <= tol * scale))
        if converged or size == steps:
            break
        basis.set(size, w.div_(beta))
        del w
    ritz = basis.combine(torch.as_tensor(S[:, [0, -1]].T.copy(), device=v0.device,
                                         dtype=v0.dtype))
    residuals = np.array([fnorm(matvec(x) - t * x)
                          for x, t in zip(ritz, theta[[0, -1]])])
    return _Ends(theta[[0, -1]], residuals, converged, size)
