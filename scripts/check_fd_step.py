"""The finite difference's step along a sharp direction: GPT-2 small's top eigenvector.

Builds GPT-2 small from code (124M parameters, tied embeddings, random initialization, the data
of `scripts/bench_scale.py`), finds its top eigenvector with exact products, and prints, for
the step rule's length times 1, 1/4, 1/16 and 1/64, the finite-difference product's Rayleigh
quotient and its relative error ||FD - H v|| / ||H v|| along that eigenvector and along a random
unit vector, first with the step as the rule gives it (the truncation check's cap removed
before each product, and the check made the first call shorten it: its length is printed),
then the same products with the check off (`hvp_fd.MAX_SHORTER = 0`). The unchecked top-vector
errors show the h^2 law of truncation; the random vector's grow as 1/h (rounding).

    python scripts/check_fd_step.py --threads 1          # about 8 GiB, minutes on one thread
    python scripts/check_fd_step.py --small              # tiny widths: a smoke test in seconds
"""

from __future__ import annotations

import argparse
import math

import torch
from bench_scale import cases, make_probe

from landscape import hessian_eigenvalues, hvp_choice


def errors(probe, x: torch.Tensor, hx: torch.Tensor, shrink: float) -> tuple[float, float, float]:
    """(Rayleigh quotient, relative error, step length) of one finite-difference product."""
    probe.products.fd.length_cap = math.inf
    with probe.batch_pass.session(None):
        out = probe.products.finite_difference(x, shrink=shrink).double()
    return (float(x.double() @ out), float((out - hx).norm() / hx.norm()),
            probe.products.fd.length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny widths: a smoke test")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    case = cases(args.small)["gpt2"]
    torch.manual_seed(0)
    model = case.build()
    probe = make_probe(case, model, case.data())
    res = hessian_eigenvalues(probe, k=1, tol=1e-3, return_vectors=True)
    v = res.eigenvectors[0]
    r = torch.randn(v.numel(), generator=torch.Generator().manual_seed(1))
    r /= r.norm()
    hv, hr = probe.hvp(v).double(), probe.hvp(r).double()  # exact where "auto" chose so
    print(f"GPT-2 {'(small widths)' if args.small else 'small'}: {probe.num_params / 1e6:.1f}M "
          f"parameters; top eigenvalue {res.eigenvalues[0]:.6g} by {res.hvp_method} products "
          f"(residual {res.residuals[0]:.2g}); reference products: {probe.hvp_method_used}; "
          f"their Rayleigh quotient {float(v.double() @ hv):.6g}")
    print("\n| check | step, times the rule's | vector | step length | Rayleigh quotient | "
          "relative error |")
    print("|---|---|---|---|---|---|")
    for check in (True, False):
        saved = hvp_choice.MAX_SHORTER
        hvp_choice.MAX_SHORTER = saved if check else 0
        try:
            for shrink in (1, 1 / 4, 1 / 16, 1 / 64):
                for name, x, hx in (("top", v, hv), ("random", r, hr)):
                    q, err, length = errors(probe, x, hx, shrink)
                    print(f"| {'on' if check else 'off'} | 1/{round(1 / shrink)} | {name} | "
                          f"{length:.3g} | {q:.6g} | {err:.2e} |", flush=True)
        finally:
            hvp_choice.MAX_SHORTER = saved


if __name__ == "__main__":
    main()
