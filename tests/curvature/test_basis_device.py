"""hessian_eigenvalues(basis_device="cpu"): the Lanczos basis in host memory, same results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import tiny_data, tiny_mlp

import landscape.curvature._basis as basis_module
from landscape import LandscapeError, Probe, hessian_eigenvalues


@pytest.mark.parametrize("max_vectors", [None, 6, 2])  # full basis, restarted, recurrence
def test_host_basis_gives_the_same_eigenvalues_and_keeps_its_vectors_on_the_host(
        monkeypatch, max_vectors):
    x, y = tiny_data(40)
    probe = Probe(tiny_mlp(), (x, y))
    wants_vectors = max_vectors != 2
    reference = hessian_eigenvalues(probe, k=2 if wants_vectors else 1, tol=1e-8,
                                    max_vectors=max_vectors, return_vectors=wants_vectors)
    made = []
    original = basis_module.Basis.__init__

    def spy(self, n, capacity, device, dtype, pin=False):
        made.append((torch.device(device), pin))
        original(self, n, capacity, device, dtype, pin)

    monkeypatch.setattr(basis_module.Basis, "__init__", spy)
    got = hessian_eigenvalues(probe, k=2 if wants_vectors else 1, tol=1e-8,
                              max_vectors=max_vectors, return_vectors=wants_vectors,
                              basis_device="cpu")
    np.testing.assert_allclose(got.eigenvalues, reference.eigenvalues, rtol=1e-12)
    assert got.n_hvp == reference.n_hvp
    assert all(d == torch.device("cpu") and not pin for d, pin in made)  # CPU probe: no pinning
    if wants_vectors:
        assert made and got.eigenvectors.device == torch.device("cpu")


def test_basis_device_is_checked():
    x, y = tiny_data(20)
    probe = Probe(tiny_mlp(), (x, y))
    for bad in ("gpu7", "meta", 3.5):
        with pytest.raises(LandscapeError, match="basis_device must be None"):
            hessian_eigenvalues(probe, basis_device=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_basis_is_pinned_host_memory(monkeypatch):  # pragma: no cover - GPU only
    x, y = tiny_data(40)
    probe = Probe(tiny_mlp().cuda(), (x.cuda(), y.cuda()))
    pinned = []
    original = basis_module.Basis.__init__

    def spy(self, n, capacity, device, dtype, pin=False):
        pinned.append((torch.device(device).type, pin))
        original(self, n, capacity, device, dtype, pin)

    monkeypatch.setattr(basis_module.Basis, "__init__", spy)
    got = hessian_eigenvalues(probe, k=2, basis_device="cpu", return_vectors=True)
    assert pinned == [("cpu", True)] and got.eigenvectors.device.type == "cpu"
