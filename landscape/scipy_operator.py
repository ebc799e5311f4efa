"""A probe's curvature matrix as a scipy `LinearOperator` (`Probe.hessian_operator`)."""

from __future__ import annotations

from typing import Any

import torch

from .errors import LandscapeError


def linear_operator(probe: Any, curvature: str = "hessian") -> Any:
    """The Hessian (or GGN, `curvature="ggn"`) of `probe` at w as a `LinearOperator` on float64
    numpy vectors of `probe.num_params` entries; each matvec costs one product on the probe's
    device (`probe.hvp` or `probe.ggn_vp`)."""
    from scipy.sparse.linalg import LinearOperator

    if curvature not in ("hessian", "ggn"):
        raise LandscapeError(f"curvature must be 'hessian' or 'ggn'; got {curvature!r}.")
    product = probe.hvp if curvature == "hessian" else probe.ggn_vp

    def matvec(x):
        v = torch.as_tensor(x.reshape(-1), dtype=probe.dtype, device=probe.device)
        return product(v).detach().cpu().double().numpy()

    n = probe.num_params
    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype="float64")
