"""Finite-difference and exact Hessian-vector products side by side on GPT-2 medium (355M).

Builds GPT-2 medium from code (vocabulary 50257, width 1024, 24 blocks, 16 heads, tied
embeddings; random initialization, since nothing can be downloaded) with a small batch of random
tokens, and prints, for `hvp_method="double_backward"` (exact) and `"finite_difference"`:

* `grad s`: one full-data gradient (median of 2 after a warm-up), the unit of time;
* `gradients per product`: the wall time of one product (median of 2) over `grad s`;
* `peak over a gradient, vectors`: the resident memory reached during one product minus that
  reached during one gradient, in parameter-sized vectors (VmHWM on Linux, "n/a" elsewhere);
* the agreement of the two products on one Gaussian vector, ||FD - exact|| / ||exact||;
* the converged top eigenvalue, `hessian_eigenvalues(k=1, tol=--tol, max_vectors=3)` (the
  three-term recurrence: 2 stored vectors, then a second pass for the Ritz vector, whose true
  residual decides `converged`), with its products, residual, error bound, stored vectors and
  the peak memory of the whole run over a gradient, for each method, and the relative
  difference of the two eigenvalues.

Heavy: about 1.4 GB per vector and, on one CPU thread, tens of seconds per product. On a shared
machine run it under the lock with a timeout:

    flock /work/wt/heavy.lock timeout 1500 python scripts/bench_scale_fd.py --threads 2
    python scripts/bench_scale_fd.py --small        # tiny widths: a smoke test in seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch

# the RSS high-water mark, read the same way as the scale benchmark beside this script
from bench_scale import peak_bytes, peak_reset

from landscape import Probe, hessian_eigenvalues
from landscape.data.architectures import causal_lm_loss, gpt2_lm, token_data


def timed(fn, repeats: int = 2) -> tuple[float, int | None]:
    """(median seconds of `repeats` calls, peak resident bytes during the last)."""
    times, peak = [], None
    for _ in range(repeats):
        peak_reset()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        peak = peak_bytes()
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny widths: a smoke test")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per sequence")
    parser.add_argument("--tol", type=float, default=1e-3, help="eigenvalue tolerance")
    parser.add_argument("--max-iter", type=int, default=80, help="products per eigenvalue")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = args.small
    vocab = 500 if s else 50257
    torch.manual_seed(0)
    model = gpt2_lm(vocab_size=vocab, context=64, width=32 if s else 1024, depth=2 if s else 24,
                    heads=4 if s else 16)
    data = [{"input_ids": token_data(1, args.tokens + 1, vocab, seed=1)}]
    n = sum(p.numel() for p in model.parameters())
    vec = 4 * n
    print(f"GPT-2 {'(small widths)' if s else 'medium'}: {n / 1e6:.1f}M parameters, "
          f"{vec / 2**30:.2f} GiB per vector; 1 sequence of {args.tokens} tokens; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, CPU, float32, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    probes = {m: Probe(model, data, batch_loss=causal_lm_loss, hvp_method=m, check_hvp=False)
              for m in ("double_backward", "finite_difference")}
    base = probes["double_backward"]
    base.gradient()  # first use: the data checks
    grad_s, grad_peak = timed(base.gradient)
    print(f"gradient: {grad_s:.1f} s", flush=True)
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))
    products, rows = {}, []
    for method, probe in probes.items():
        products[method] = probe.hvp(v)  # warm-up, and the product compared below
        seconds, peak = timed(lambda p=probe: p.hvp(v))
        beyond = "n/a" if peak is None or grad_peak is None else \
            f"{max(peak - grad_peak, 0) / vec:.1f}"
        rows.append([method, f"{seconds / grad_s:.2f}", beyond])
        print(f"{method}: {seconds:.1f} s per product", flush=True)
    exact, fd = products["double_backward"], products["finite_difference"]
    agreement = float(torch.linalg.vector_norm(fd - exact) / torch.linalg.vector_norm(exact))
    del products, exact, fd
    tops = {}
    for method, probe in probes.items():
        peak_reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # reported in the table instead
            res = hessian_eigenvalues(probe, k=1, tol=args.tol, max_vectors=3,
                                      max_iter=args.max_iter, seed=0)
        peak = peak_bytes()
        run = "n/a" if peak is None or grad_peak is None else \
            f"{max(peak - grad_peak, 0) / vec:.1f}"
        tops[method] = res
        print(f"{method}: top eigenvalue {float(res.eigenvalues[0]):.6g} after {res.n_hvp} "
              f"products, {res.seconds:.0f} s, converged {res.converged}", flush=True)
        rows[[r[0] for r in rows].index(method)].append(run)
    print(f"\n| product | gradients per product | peak over a gradient, vectors (one product) | "
          f"top eigenvalue (tol {args.tol:g}) | residual | error bound | products | converged "
          "| stored vectors | peak over a gradient, vectors (the eigenvalue run) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (method, ratio, beyond, run) in rows:
        r = tops[method]
        print(f"| {method} | {ratio} | {beyond} | {float(r.eigenvalues[0]):.6g} | "
              f"{float(r.residuals[0]):.2g} | {float(r.error_bounds[0]):.2g} | {r.n_hvp} | "
              f"{r.converged} | {r.stored_vectors} | {run} |")
    a, b = (float(tops[m].eigenvalues[0]) for m in ("finite_difference", "double_backward"))
    print(f"\nproduct agreement on a Gaussian vector: ||FD - exact|| / ||exact|| = {agreement:.2e}")
    print(f"top eigenvalue agreement: |FD - exact| / |exact| = {abs(a - b) / abs(b):.2e}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
