"""A quadratic loss with a known Hessian: the ground truth every estimator can be checked on.

L(w) = offset + 0.5 v^T H v + g^T v with v = w - w*, in float64, w starting at `start` (w* by
default). Its Hessian is H everywhere and its gradient H v + g; with g = 0, at w*, the
worst-case l2 sharpness is rho^2 lambda_max / 2 and the first-order flatness rho^2 lambda_max
(docs/measures.md, "Ground truths the tests use"). The loss ignores the data: the probe has
one dummy sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import LandscapeError
from ..probe import Probe


class Quadratic(nn.Module):
    """L(w) = offset + 0.5 v^T H v + g^T v, v = w - w*; one parameter `w` of length n."""

    def __init__(self, hessian: Tensor, minimum: Tensor, start: Tensor, offset: float = 0.0,
                 gradient: Tensor | None = None):
        super().__init__()
        self.w = nn.Parameter(start.clone())
        self.register_buffer("hessian", hessian)
        self.register_buffer("minimum", minimum)
        self.register_buffer("linear", torch.zeros_like(minimum) if gradient is None else gradient)
        self.offset = offset

    def forward(self) -> Tensor:
        v = self.w - self.minimum
        return self.offset + 0.5 * v @ self.hessian @ v + self.linear @ v


def quadratic_probe(hessian: Sequence[float] | Tensor, *,
                    minimum: Sequence[float] | Tensor | None = None,
                    start: Sequence[float] | Tensor | None = None,
                    offset: float = 0.0,
                    gradient: Sequence[float] | Tensor | None = None) -> Probe:
    """A Probe of L(w) = offset + 0.5 v^T H v + g^T v with v = w - w* (float64).

    Args:
        hessian: H, as its diagonal (a 1-D sequence of eigenvalues) or a symmetric n x n matrix.
        minimum: w* (zeros by default; the minimum when g = 0 and H is positive definite).
        start: where w is (w* by default): the point the probe measures around.
        offset: L(w*).
        gradient: g, the gradient at w* (zeros by default).

    Example:
        >>> from landscape import hessian_eigenvalues
        >>> probe = quadratic_probe([3.0, 1.0])  # L(w) = 0.5 (3 w_0^2 + w_1^2), at w = 0
        >>> hessian_eigenvalues(probe, k=1).eigenvalues.round(6).tolist()
        [3.0]
    """
    h = torch.as_tensor(hessian, dtype=torch.float64)
    if h.ndim == 1:
        h = torch.diag(h)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] == 0:
        raise LandscapeError(
            f"hessian must be a 1-D list of eigenvalues or a square matrix; got shape "
            f"{tuple(h.shape)}."
        )
    if not torch.allclose(h, h.T):
        raise LandscapeError("hessian must be symmetric; pass (H + H.T) / 2.")
    n = h.shape[0]
    w_star = torch.zeros(n, dtype=torch.float64) if minimum is None else torch.as_tensor(
        minimum, dtype=torch.float64)
    w0 = w_star if start is None else torch.as_tensor(start, dtype=torch.float64)
    g = torch.zeros(n, dtype=torch.float64) if gradient is None else torch.as_tensor(
        gradient, dtype=torch.float64)
    for name, v in (("minimum", w_star), ("start", w0), ("gradient", g)):
        if v.shape != (n,):
            raise LandscapeError(f"{name} must have length {n} (the Hessian's size); got shape "
                                 f"{tuple(v.shape)}.")
    model = Quadratic(h, w_star.clone(), w0, float(offset), g.clone())
    return Probe(model, [torch.zeros(1)], batch_loss=lambda m, _batch: m())
