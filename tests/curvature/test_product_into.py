"""Products written into a given vector: `probe.hvp(v, out=...)` and Lanczos steps whose
products go straight into the next basis row (issue 19, point 6: no new parameter-sized vector
a step). The results must be those of the ordinary products, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import exact_hessian, tiny_data, tiny_mlp

from landscape import LandscapeError, Probe, hessian_eigenvalues
from landscape.curvature.lanczos import lanczos_eigs


@pytest.mark.parametrize("method", ["auto", "cached_graph", "double_backward",
                                    "finite_difference"])
def test_hvp_into_out_is_the_product_and_is_out(method):
    model = tiny_mlp()
    x, y = tiny_data(37)
    probe = Probe(model, (x, y), hvp_method=method)
    H = exact_hessian(model, x, y)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # the first product settles "auto"; the later ones use the kept graph
        v = torch.randn(probe.num_params, generator=gen, dtype=torch.float64)
        out = torch.full_like(v, float("nan"))
        got = probe.hvp(v, out=out)
        assert got is out or got.data_ptr() == out.data_ptr()
        assert torch.allclose(out, probe.hvp(v), rtol=1e-12, atol=1e-14)
        tol = 1e-4 if method == "finite_difference" else 1e-8
        assert torch.allclose(out, H @ v, atol=tol, rtol=tol)


def test_hvp_through_the_kept_graph_writes_into_out_without_a_copy(monkeypatch):
    """The cached product's flat output is `out` itself (torch.cat(out=...)), not a copy."""
    model = tiny_mlp()
    x, y = tiny_data(37)
    probe = Probe(model, (x, y), hvp_method="cached_graph")
    v = torch.randn(probe.num_params, dtype=torch.float64)
    probe.hvp(v)
    out = torch.empty_like(v)
    copies = []
    original = torch.Tensor.copy_
    monkeypatch.setattr(torch.Tensor, "copy_",
                        lambda self, src, *a, **k: copies.append(1) or original(self, src, *a, **k))
    probe.hvp(v, out=out)
    monkeypatch.undo()
    assert not copies
    assert torch.equal(out, probe.hvp(v))


def test_hvp_out_must_be_a_separate_contiguous_vector():
    probe = Probe(tiny_mlp(), tiny_data(37))
    v = torch.randn(probe.num_params, dtype=torch.float64)
    with pytest.raises(LandscapeError, match="not v itself"):
        probe.hvp(v, out=v)
    with pytest.raises(LandscapeError, match="contiguous"):
        probe.hvp(v, out=torch.empty(2 * probe.num_params, dtype=torch.float64)[::2])
    with pytest.raises(LandscapeError, match="dtype"):
        probe.hvp(v, out=torch.empty(probe.num_params, dtype=torch.float32))


def test_lanczos_products_into_the_basis_match_the_ordinary_ones():
    """Same eigenvalues, residuals and vectors (bitwise: the same arithmetic), through thick
    restarts (basis of 6), with every iteration product written into a basis row."""
    g = torch.Generator().manual_seed(0)
    n = 90
    eigs = torch.cat([torch.tensor([10.0, 9.5, 9.0]), torch.linspace(5.0, -1.0, n - 3)])
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    A = U @ torch.diag(eigs.double()) @ U.T
    v0 = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows: list[int] = []

    def into(v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        rows.append(out.data_ptr())
        return torch.mv(A, v, out=out)

    def run(with_into: bool):
        return lanczos_eigs(lambda v: A @ v, v0.clone(), 2, "largest", 1e-8, 300, 6,
                            torch.Generator().manual_seed(2), True,
                            into=into if with_into else None)

    want, got = run(False), run(True)
    assert got.converged and got.n_matvec == want.n_matvec
    assert len(rows) == got.n_matvec - 2  # every iteration product; the 2 checks are not
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.residuals, want.residuals)
    assert torch.equal(got.vectors, want.vectors)
    np.testing.assert_allclose(got.values, [10.0, 9.5], rtol=1e-8)


def test_hessian_eigenvalues_on_a_probe_writes_products_into_the_basis(monkeypatch):
    model = tiny_mlp()
    x, y = tiny_data(37)
    want = hessian_eigenvalues(Probe(model, (x, y)), k=2, tol=1e-8, return_vectors=True)
    probe = Probe(model, (x, y))
    calls = []
    original = Probe.hvp

    def spy(self, v, delta=None, *, out=None):
        calls.append(out is not None)
        return original(self, v, delta, out=out)

    monkeypatch.setattr(Probe, "hvp", spy)
    got = hessian_eigenvalues(probe, k=2, tol=1e-8, return_vectors=True)
    assert sum(calls) >= got.n_hvp - 2  # all but the true-residual checks
    np.testing.assert_allclose(got.eigenvalues, want.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(got.eigenvalues, np.linalg.eigvalsh(
        exact_hessian(model, x, y).numpy())[::-1][:2], rtol=1e-8)
