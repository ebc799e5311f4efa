"""Power iteration with deflation (PyHessian's method), kept as a baseline for Lanczos."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._random import normal
from .._reduce import dot, fdot, fnorm, norm, normalize_
from ._common import MatVec
from ._eigs import Eigs
from ._ritz import rayleigh_residuals


def power_eigs(
    matvec: MatVec, v0: Tensor, k: int, tol: float, max_iter: int, gen: torch.Generator,
) -> Eigs:
    """Power iteration with deflation (PyHessian's method) stopped on the residual rule.

    Vector i of k is iterated to tol * 10^-(k-1-i), since the deflation of the later ones
    against it leaves them a residual about as large as its own; the returned unit vectors are
    then checked with one product each (`rayleigh_residuals`), which decides `converged`. The
    error bounds are the residuals (there are no Ritz values of the rest of the spectrum to
    estimate a gap from).
    """
    n = v0.numel()
    found: list[Tensor] = []
    n_mv = 0
    v = v0
    floor = 100 * torch.finfo(v0.dtype).eps
    for i in range(k):
        if i:
            v = normal(n, gen, v0.dtype).to(v0.device)
        target = tol * 10.0 ** -(k - 1 - i)
        while n_mv < max_iter:
            for u in found:
                v = v - dot(u, v).to(v.dtype) * u
            v = v / norm(v).to(v.dtype)
            w = matvec(v)
            n_mv += 1
            theta = fdot(v, w)
            r = fnorm(w - theta * v)  # of H itself (v is orthogonal to the found vectors)
            if r <= max(target, floor) * abs(theta):
                break
            for u in found:
                w = w - dot(u, w).to(w.dtype) * u
            v = w
        found.append(normalize_(v))
    # check each returned vector with one product
    values, residuals = rayleigh_residuals(matvec, found)
    n_mv += len(found)
    scale = float(np.max(np.abs(values)))
    converged = bool(np.all(residuals <= np.maximum(tol * np.abs(values),
                                                                  floor * scale)))
    order = np.argsort(values)[::-1]
    vectors = torch.stack(found)[torch.as_tensor(order.copy(), device=v0.device)]
    values, residuals = values[order], residuals[order]
    # no Ritz values of the rest of the spectrum to estimate a gap from: the residual itself
    return Eigs(values, residuals, vectors, converged, n_mv, k + 1, residuals.copy())
