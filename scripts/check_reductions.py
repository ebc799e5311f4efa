"""Float32 reductions at GPT-2 size: torch's against landscape._reduce's, both against float64.

Prints, for n float32 elements (default 124M, GPT-2 small): the relative error of ||a|| and of
a . b summed by torch in float32 and by `landscape._reduce` (float64 chunks), against numpy
float64 summed with math.fsum; then the norm of the eigenvector that Lanczos returns for a
diagonal operator of that size (it must be 1 within 1e-6). About 4 GB and 2 minutes:

    OMP_NUM_THREADS=1 flock /work/wt/heavy.lock python scripts/check_reductions.py
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from landscape._reduce import fdot, fnorm
from landscape.curvature.lanczos import lanczos_eigs


def _reference(a: torch.Tensor, b: torch.Tensor) -> float:
    an, bn, step = a.numpy(), b.numpy(), 2**20
    return math.fsum(float(np.dot(an[i:i + step].astype(np.float64),
                                  bn[i:i + step].astype(np.float64)))
                     for i in range(0, len(an), step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=124_000_000)
    parser.add_argument("--no-lanczos", action="store_true",
                        help="only the reductions (about 1.5 GB)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.n
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, generator=g).abs_()  # positive terms: the case float32 sums drift on
    b = torch.randn(n, generator=g)
    print(f"torch {torch.__version__}, 1 thread, n = {n:,} float32 elements")
    ref_aa, ref_ab = _reference(a, a), _reference(a, b)
    scale = math.sqrt(ref_aa * _reference(b, b))  # |a . b| <= this; errors relative to it
    rows = [("||a||", float(torch.linalg.vector_norm(a)), fnorm(a), math.sqrt(ref_aa),
             math.sqrt(ref_aa)),
            ("a . a", float(a @ a), fdot(a, a), ref_aa, ref_aa),
            ("a . b", float(a @ b), fdot(a, b), ref_ab, scale)]
    print("quantity | torch float32 rel. error | landscape._reduce rel. error")
    for name, f32, f64, ref, denom in rows:
        print(f"{name:8s} | {abs(f32 - ref) / denom:.2e} | {abs(f64 - ref) / denom:.2e}")
    del b
    if args.no_lanczos:
        return
    diag = torch.rand(n, generator=g)
    diag[:3] = torch.tensor([3.0, 2.5, 2.0])
    del a
    t0 = time.perf_counter()
    out = lanczos_eigs(lambda v: v * diag, torch.randn(n, generator=g), 1, "largest", 1e-4,
                       300, 3, g, return_vectors=True)
    v = out.vectors[0]
    print(f"Lanczos (basis of 3, tol 1e-4) on diag(3, 2.5, 2, U(0,1)...): eigenvalue "
          f"{out.values[0]:.7f}, residual {out.residuals[0]:.2e}, bound {out.bounds[0]:.2e}, "
          f"{out.n_matvec} products, {time.perf_counter() - t0:.0f} s")
    print(f"returned eigenvector: | ||v|| - 1 | = {abs(fnorm(v) - 1):.2e} (float64 sum), "
          f"{abs(float(torch.linalg.vector_norm(v)) - 1):.2e} as torch float32 reports it")


if __name__ == "__main__":
    main()
