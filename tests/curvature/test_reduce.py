"""Reductions over parameter-sized vectors agree with float64 at 50M elements (issue 19)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from landscape._reduce import CHUNK, dot, fdot, fnorm, gram, normalize_, rows_dot, sweep
from landscape.curvature import _basis
from landscape.curvature._basis import Basis
from landscape.curvature.lanczos import lanczos_eigs
from landscape.hvp_memory import PeakNew

N_LARGE = 50_000_000


def _reference_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """sum a_i b_i in float64 by numpy over 1M pieces, the pieces added by math.fsum."""
    an, bn = a.numpy(), b.numpy()
    step = 2**20
    return math.fsum(float(np.dot(an[i:i + step].astype(np.float64),
                                  bn[i:i + step].astype(np.float64)))
                     for i in range(0, len(an), step))


@pytest.mark.slow
def test_dot_and_norm_match_float64_at_50m_elements():
    """Within float32's own precision (the products are rounded once each), where torch's
    float32 BLAS sums are off by orders of magnitude more."""
    eps = torch.finfo(torch.float32).eps
    g = torch.Generator().manual_seed(0)
    a = torch.randn(N_LARGE, generator=g)
    b = torch.randn(N_LARGE, generator=g)
    ref_ab, ref_aa = _reference_dot(a, b), _reference_dot(a, a)
    ab = a * b
    spread = math.sqrt(_reference_dot(ab, ab))  # the products' roundings add up to ~ eps * this
    del ab
    assert abs(fdot(a, b) - ref_ab) <= 2 * eps * spread
    assert abs(fnorm(a) - math.sqrt(ref_aa)) <= 1e-7 * math.sqrt(ref_aa)
    # a vector of equal positive terms: float32 accumulation drifts, these sums must not
    c = torch.full((N_LARGE,), 0.1)
    exact = N_LARGE * float(np.float32(0.1)) ** 2
    assert abs(fdot(c, c) - exact) <= 1e-7 * exact
    normalize_(c)
    assert abs(fnorm(c) - 1.0) <= 1e-7


def test_chunked_paths_agree_with_float64():
    """Vectors longer than CHUNK go through the chunked sums (rows, gram and dot alike)."""
    g = torch.Generator().manual_seed(1)
    n = CHUNK * 2 + 12345
    rows = torch.randn(3, n, generator=g)
    w = torch.randn(n, generator=g)
    want = rows.double() @ w.double()
    scale = float(rows.double().norm(dim=1).max() * w.double().norm())
    assert torch.allclose(rows_dot(rows, w), want, rtol=0, atol=1e-9 * scale)
    assert torch.allclose(gram(rows.T, w[:, None])[:, 0], want, rtol=0, atol=1e-12 * scale)
    assert abs(float(dot(rows[0], w)) - float(want[0])) <= 1e-9 * scale
    assert dot(rows[0], w).dtype == torch.float64


@pytest.mark.slow
def test_lanczos_eigenvector_is_a_unit_vector_at_50m_float32():
    """The returned eigenvector of a 50M-element float32 operator has norm 1 within 1e-6."""
    n = N_LARGE
    g = torch.Generator().manual_seed(2)
    diag = torch.rand(n, generator=g)
    diag[:3] = torch.tensor([3.0, 2.5, 2.0])

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return v * diag

    v0 = torch.randn(n, generator=g)
    out = lanczos_eigs(matvec, v0, 1, "largest", 1e-3, 200, 3, g, return_vectors=True)
    assert abs(out.values[0] - 3.0) <= 1e-4
    assert abs(fnorm(out.vectors[0]) - 1.0) <= 1e-6


def _orthonormal_basis(n: int, k: int, g: torch.Generator) -> Basis:
    """A float32 basis of k orthonormal random rows of length n, built by the basis itself."""
    basis = Basis(n, k, torch.device("cpu"), torch.float32)
    for i in range(k):
        x = torch.randn(n, generator=g)
        basis.orthogonalize(x, i)
        basis.set(i, normalize_(x))
    return basis


def test_basis_orthogonalizes_in_float64():
    """Gram-Schmidt coefficients come back in float64 and leave w orthogonal to the rows."""
    g = torch.Generator().manual_seed(3)
    n = CHUNK + 7
    basis = _orthonormal_basis(n, 2, g)
    w = torch.randn(n, generator=g)
    h = basis.orthogonalize(w, 2)
    assert h.dtype == torch.float64
    assert float(rows_dot(torch.stack([basis.row(0), basis.row(1)]), w).abs().max()) <= (
        1e-6 * fnorm(w))


def test_rows_dot_makes_no_product_temporary():
    """On the CPU the rows' float32 partial sums come from a batched product over 32-element
    blocks: nothing of the chunk's size is allocated (the products x * y took CHUNK elements)."""
    g = torch.Generator().manual_seed(4)
    n = CHUNK * 2 + 77
    rows = torch.randn(4, n, generator=g)
    w = torch.randn(n, generator=g)
    with PeakNew() as meter:
        out = rows_dot(rows, w)
    assert meter.peak < CHUNK  # bytes: a quarter of one chunk's float32 products
    want = rows.double() @ w.double()
    scale = float(rows.double().norm(dim=1).max() * w.double().norm())
    assert torch.allclose(out, want, rtol=0, atol=1e-9 * scale)


def test_sweep_subtracts_and_reduces_in_one_pass():
    """w -= R^T c in place, then R @ w and ||w||^2, rows in two blocks, as float64."""
    g = torch.Generator().manual_seed(5)
    n = CHUNK + 4099
    rows = torch.randn(5, n, generator=g)
    w = torch.randn(n, generator=g)
    c = torch.randn(5, generator=g, dtype=torch.float64)
    want_w = w.double() - rows.double().T @ c.float().double()
    dots, squares = sweep([rows[:3], rows[3:]], w, subtract=c, square=True)
    assert torch.allclose(w.double(), want_w, rtol=0, atol=1e-5)
    scale = float(rows.double().norm(dim=1).max() * want_w.norm())
    assert dots.dtype == squares.dtype == torch.float64
    assert torch.allclose(dots, rows.double() @ w.double(), rtol=0, atol=1e-9 * scale)
    assert float(squares) == pytest.approx(float(w.double().square().sum()), rel=1e-7)
    assert sweep([rows], w, dots=False)[0] is None


def test_orthogonalize_norm_returns_the_remainder_norm():
    g = torch.Generator().manual_seed(6)
    n = CHUNK + 11
    basis = _orthonormal_basis(n, 3, g)
    w = torch.randn(n, generator=g) + 50 * basis.row(1)
    h, remainder = basis.orthogonalize_norm(w, 3)
    assert float(h[1]) == pytest.approx(50, abs=5)  # plus a Gaussian component
    assert float(remainder) == pytest.approx(fnorm(w), rel=1e-7)
    assert float(rows_dot(torch.stack([basis.row(i) for i in range(3)]), w).abs().max()) <= (
        1e-6 * fnorm(w))


def test_gram_schmidt_projects_twice_only_after_cancellation(monkeypatch):
    """DGKS: a w mostly outside the rows is projected once (two passes over the rows), a w
    mostly inside them twice (three passes); both end orthogonal to the rows."""
    g = torch.Generator().manual_seed(7)
    n = CHUNK + 5
    basis = _orthonormal_basis(n, 3, g)
    passes = []
    real = _basis.sweep
    monkeypatch.setattr(_basis, "sweep", lambda *a, **k: passes.append(1) or real(*a, **k))
    rows = torch.stack([basis.row(i) for i in range(3)])
    for inside, want in ((0.1, 2), (1e3, 3)):
        passes.clear()
        w = torch.randn(n, generator=g) + inside * rows.sum(0)
        h, left = basis.orthogonalize_norm(w, 3)
        assert len(passes) == want
        assert float(rows_dot(rows, w).abs().max()) <= 1e-6 * fnorm(w)
        assert float(left) == pytest.approx(fnorm(w), rel=1e-7)
        assert float(h.min()) == pytest.approx(inside, abs=5)
