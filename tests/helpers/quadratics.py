"""Quadratic models in blocks, L(w) = L* + 0.5 v^T H v + g^T v with v = w - w*: the ground
truths of sharpness, flatness and the beyond-curvature measures (DESIGN.md)."""

from __future__ import annotations

import math

import scipy.optimize
import torch
from torch import nn

from landscape import Probe

F64 = torch.float64
DUMMY = [torch.zeros(1, 1)]


class Block(nn.Module):
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(value.clone())


class Quadratic(nn.Module):
    """L(w) = L* + 0.5 v^T H v + g^T v with v = w - w*; w split into blocks `layer0`, `layer1`...

    Each block is a module with one parameter `w` of the given shape (flattened in order).
    """

    def __init__(self, H, w_star, g=None, l_star=0.0, shapes=None, w0=None):
        super().__init__()
        n = H.shape[0]
        shapes = shapes or [(n,)]
        self.register_buffer("H", H)
        self.register_buffer("w_star", w_star)
        self.register_buffer("g", torch.zeros(n, dtype=F64) if g is None else g)
        self.l_star = l_star
        start = w_star if w0 is None else w0
        self.names = []
        offset = 0
        for i, shape in enumerate(shapes):
            size = math.prod(shape)
            setattr(self, f"layer{i}", Block(start[offset:offset + size].view(shape)))
            self.names.append(f"layer{i}")
            offset += size

    def forward(self, batch):
        w = torch.cat([getattr(self, name).w.reshape(-1) for name in self.names])
        v = w - self.w_star
        return self.l_star + 0.5 * v @ self.H @ v + self.g @ v


def quad_probe(model: nn.Module) -> Probe:
    return Probe(model, DUMMY, batch_loss=lambda m, b: m(b))


def spd(eigenvalues, seed=0):
    n = len(eigenvalues)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=gen))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ q.T


def trust_region_max(H, g, rho):
    """max over ||v|| <= rho of g^T v + v^T H v / 2 by the secular equation (H has lam_max > 0).

    The maximizer is v = (lam I - H)^{-1} g with lam > lambda_max(H) and ||v|| = rho.
    """
    lams, Q = torch.linalg.eigh(H)
    gq = Q.T @ g

    def norm_minus_rho(lam):
        return float(torch.linalg.norm(gq / (lam - lams))) - rho

    top = float(lams[-1])
    lo, hi = top + 1e-12, top + float(g.norm()) / rho + 1.0
    lam = scipy.optimize.brentq(norm_minus_rho, lo, hi, xtol=1e-15)
    v = Q @ (gq / (lam - lams))
    return float(g @ v + 0.5 * v @ H @ v)


LAMS = [4.0, 2.0, 1.0, 0.5, 0.2, 0.1]
