"""Quadratics with a designed Hessian spectrum, H = U diag(eigs) U^T: the ground truths of the
curvature estimators."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from landscape import Probe


class Quadratic(nn.Module):
    """L(w) = 0.5 (w - w*)^T H (w - w*) + g^T (w - w*), whatever the input."""

    def __init__(self, H: torch.Tensor, g: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        n = H.shape[0]
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64))
        self.register_buffer("H", H)
        self.register_buffer("w_star", torch.randn(n, generator=gen, dtype=torch.float64))
        self.register_buffer("g", torch.zeros(n, dtype=torch.float64) if g is None else g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.w - self.w_star
        return 0.5 * v @ self.H @ v + self.g @ v


def designed(eigs, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """H = U diag(eigs) U^T with a random orthogonal U; returns (H, U)."""
    eigs = torch.as_tensor(eigs, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen,
                                    dtype=torch.float64)).Q
    return U @ torch.diag(eigs) @ U.T, U


def quad_probe(H: torch.Tensor) -> Probe:
    return Probe(Quadratic(H), [torch.zeros(1)], batch_loss=lambda m, b: m(b))


# a clear gap at the top, negative eigenvalues at the bottom
SPECTRUM = np.concatenate([[10.0, 8.0, 6.5, 5.0, 4.0], np.linspace(2.0, -1.0, 70), [-3.0, -5.0]])
