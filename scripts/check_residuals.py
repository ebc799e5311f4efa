"""Reported against independently computed residuals of hessian_eigenvalues (issue 19).

Trains the small ViT of `scripts/density_vs_trace.py` (40 Adam steps, float32), asks for the
quick audit's top 5 (tol 1e-3, 60 products) with their vectors, and recomputes
||H v - lambda v|| / ||v|| for each returned pair with a fresh product and float64 norms:

    OMP_NUM_THREADS=1 python scripts/check_residuals.py
"""

from __future__ import annotations

import warnings

import torch
from density_vs_trace import _images, _train  # the script's own folder

from landscape import Probe, hessian_eigenvalues
from landscape.data.architectures import vit


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    ce = torch.nn.functional.cross_entropy
    model = vit(width=64, depth=2, heads=4, seed=0)
    x, y = _images(2048, seed=1)
    _train(model, lambda m, s: ce(m(x[64 * (s % 32):64 * (s % 32 + 1)]),
                                  y[64 * (s % 32):64 * (s % 32 + 1)]), 40)
    probe = Probe(model, _images(64, seed=2))
    r = hessian_eigenvalues(probe, k=5, tol=1e-3, max_iter=60, return_vectors=True)
    indep = []
    for lam, v in zip(r.eigenvalues, r.eigenvectors):
        vd = v.double()
        indep.append(float((probe.hvp(v).double() - lam * vd).norm() / vd.norm()))
    print(f"ViT, {probe.num_params} float32 parameters: top 5 at tol 1e-3, {r.n_hvp} products, "
          f"converged {r.converged}")
    print("eigenvalue | reported residual | independent | error bound | | ||v|| - 1 |")
    for lam, res, ind, bound, v in zip(r.eigenvalues, r.residuals, indep, r.error_bounds,
                                       r.eigenvectors):
        print(f"{lam:.5f} | {res:.2e} | {ind:.2e} | {bound:.2e} | "
              f"{abs(float(v.double().norm()) - 1):.1e}")


if __name__ == "__main__":
    main()
