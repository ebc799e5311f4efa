"""The eigensolvers' common return type."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass
class Eigs:
    """What an eigensolver hands back to `hessian_eigenvalues`."""

    values: np.ndarray
    residuals: np.ndarray
    vectors: Tensor | None
    converged: bool
    n_matvec: int
    n_vectors: int  # parameter-sized vectors stored (beyond the product)
    bounds: np.ndarray  # a-posteriori error bounds on the values (see `error_bounds`)
