"""Ritz pairs checked against the operator: true residuals and a-posteriori error bounds.

The Lanczos residual estimate beta_m |s_mi| is exact only for an orthonormal basis in exact
arithmetic; in float32 at millions of parameters it can be 40-450 times too small (issue 19).
So every pair an estimator returns is checked with one more product on the vector itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from torch import Tensor

from .._reduce import fdot, fnorm
from ._common import MatVec


def rayleigh_residuals(matvec: MatVec, vectors: Iterable[Tensor]) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """(theta_i, r_i) for each vector y_i (of any nonzero norm), one product each:

        theta_i = y_i^T H y_i / y_i^T y_i,    r_i = ||H y_i - theta_i y_i|| / ||y_i||,

    the Rayleigh quotient and the true residual of the unit vector y_i / ||y_i||, inner products
    accumulated in float64. Stores one product at a time besides the vectors.
    """
    values, residuals = [], []
    for y in vectors:
        hy = matvec(y)
        yy = fdot(y, y)
        theta = fdot(y, hy) / yy
        hy.sub_(y, alpha=theta)
        residuals.append(fnorm(hy) / math.sqrt(yy))
        values.append(theta)
        del hy
    return np.asarray(values, dtype=np.float64), np.asarray(residuals, dtype=np.float64)


def error_bounds(values: np.ndarray, residuals: np.ndarray, others: np.ndarray,
                 other_residuals: np.ndarray) -> np.ndarray:
    """An a-posteriori bound on |lambda_i - theta_i| for each checked pair (theta_i, r_i):

        bound_i = min(r_i, r_i^2 / gap_i),
        gap_i = min over the neighbouring Ritz values theta_j (j != i) of |theta_i - theta_j| - r_j,

    the neighbours being the other checked pairs (with their true residuals) and the remaining
    Ritz values of the projection, `others`, with their residual estimates. r_i alone is a
    rigorous bound: some eigenvalue of H lies within r_i of theta_i (Krylov-Bogoliubov / Weyl).
    r_i^2 / gap_i is the Kato-Temple bound (Parlett, The Symmetric Eigenvalue Problem, 11.7):
    it holds when no eigenvalue of H other than lambda_i lies within gap_i of theta_i, and gap_i
    is only an estimate of that distance from the Ritz values (an eigenvalue the Krylov space has
    not found yet could lie closer). It is used when gap_i > 0, else the bound is r_i.
    """
    values = np.asarray(values, dtype=np.float64)
    residuals = np.asarray(residuals, dtype=np.float64)
    near = np.concatenate([values, np.asarray(others, dtype=np.float64)])
    near_r = np.concatenate([residuals, np.asarray(other_residuals, dtype=np.float64)])
    bounds = residuals.copy()
    for i, (theta, r) in enumerate(zip(values, residuals)):
        mask = np.ones(len(near), dtype=bool)
        mask[i] = False
        if not mask.any():
            continue
        gap = float(np.min(np.abs(near[mask] - theta) - near_r[mask]))
        if gap > 0:
            bounds[i] = min(r, r * r / gap)
    return bounds
