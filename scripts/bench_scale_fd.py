"""Finite-difference and exact Hessian-vector products side by side on GPT-2 medium (355M).

Builds GPT-2 medium from code (vocabulary 50257, width 1024, 24 blocks, 16 heads, tied
embeddings; random initialization, since nothing can be downloaded) with a small batch of random
tokens, and prints, for `hvp_method="double_backward"` (exact) and `"finite_difference"`:

* `grad s`: one full-data gradient (median of 2 after a warm-up), the unit of time;
* `gradients per product`: the wall time of one product (median of 2) over `grad s`;
* `peak over a gradient, vectors`: the resident memory reached during one product minus that
  reached during one gradient, in parameter-sized vectors (VmHWM on Linux, "n/a" elsewhere);
* the agreement of the two products on one Gaussian vector, ||FD - exact|| / ||exact||;
* the value `hessian_eigenvalues(k=1, max_vectors=2, max_iter=...)` returns after a few
  products for each. Caution: after so few steps this is not an estimate of the top eigenvalue
  (exact products in float32 and float64 disagree on it too), so it does not measure the
  agreement of the products; converged eigenvalues need about 30 products per method.

Heavy: about 1.4 GB per vector and, on one CPU thread, tens of seconds per product. On a shared
machine run it under the lock with a timeout:

    flock /work/wt/heavy.lock timeout 1500 python scripts/bench_scale_fd.py --threads 1
    python scripts/bench_scale_fd.py --small        # tiny widths: a smoke test in seconds
    python scripts/bench_scale_fd.py --threads 1 --converge --max-iter 120 --max-vectors 5
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import warnings

import torch

# the RSS high-water mark, read the same way as the scale benchmark beside this script
from bench_scale import peak_bytes, peak_reset

from landscape import Probe, hessian_eigenvalues
from landscape._reduce import fdot  # float64 sums in chunks, no float64 copy of a vector
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
    parser.add_argument("--max-iter", type=int, default=6, help="Lanczos products per method")
    parser.add_argument("--converge", action="store_true",
                        help="instead: the top eigenvalue at tol 1e-3 by each product, converged")
    parser.add_argument("--only", choices=("double_backward", "finite_difference"), default=None,
                        help="with --converge: run Lanczos with this product only (the other's "
                             "exact products still judge its vector)")
    parser.add_argument("--max-vectors", type=int, default=None,
                        help="with --converge: the Lanczos basis (default: the library's)")
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
    if args.converge:
        converged_tops(probes, grad_s, args.max_iter, args.max_vectors, args.only)
        return
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # not converged in few products
            res = hessian_eigenvalues(probe, k=1, max_vectors=2, max_iter=args.max_iter, seed=0)
        tops[method] = float(res.eigenvalues[0])
    print("\n| product | gradients per product | peak over a gradient, vectors | "
          f"top Ritz value after {args.max_iter} products |")
    print("|---|---|---|---|")
    for (method, ratio, beyond) in rows:
        print(f"| {method} | {ratio} | {beyond} | {tops[method]:.6g} |")
    rel = abs(tops["finite_difference"] - tops["double_backward"]) / abs(tops["double_backward"])
    print(f"\nproduct agreement on a Gaussian vector: ||FD - exact|| / ||exact|| = {agreement:.2e}")
    print(f"top Ritz value agreement: {rel:.2e} relative")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def converged_tops(probes: dict, grad_s: float, max_iter: int, max_vectors: int | None,
                   only: str | None = None) -> None:
    """The top eigenvalue at tol 1e-3 by each product, then each returned vector's exact
    Rayleigh quotient and true residual (one exact product each), so both are judged alike.
    Only one float32 vector per method is kept between the runs (at 355M parameters a vector
    is 1.3 GiB and the machine has 23 GiB)."""
    rows, vectors = {}, {}
    for method, probe in probes.items():
        if only is not None and method != only:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        res = hessian_eigenvalues(probe, k=1, tol=1e-3, seed=0, max_iter=max_iter,
                                  max_vectors=max_vectors, return_vectors=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        vectors[method] = res.eigenvectors[0].clone()
        rows[method] = [method, f"{res.eigenvalues[0]:.6g}", f"{res.residuals[0]:.3g}",
                        str(bool(res.converged)), str(res.n_hvp), f"{wall / 60:.1f}",
                        f"{cpu / 60:.1f}", f"{wall / res.n_hvp / grad_s:.2f}"]
        print(f"{method}: {res.eigenvalues[0]:.6g} (residual {res.residuals[0]:.3g}) in "
              f"{res.n_hvp} products, {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
        if method == "finite_difference":
            products = probe.products
            print(f"  step length cap {products.fd.length_cap:.3g}; products verified by "
                  f"halving the step: {products.halvings}", flush=True)
        del res
        gc.collect()
    exact_probe = probes["double_backward"]
    for method, v in vectors.items():
        v /= fdot(v, v) ** 0.5
        hv = exact_probe.hvp(v)
        rayleigh = fdot(v, hv)
        hv -= rayleigh * v
        rows[method] += [f"{rayleigh:.6g}", f"{fdot(hv, hv) ** 0.5:.3g}"]
        del hv
    print("\n| product | top eigenvalue | its residual | converged | products | wall, min | "
          "CPU, min | gradients per product, wall | exact Rayleigh quotient of its vector | "
          "exact residual |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows.values():
        print("| " + " | ".join(row) + " |")
    if len(rows) < 2:
        return
    exact, fd = float(rows["double_backward"][1]), float(rows["finite_difference"][1])
    overlap = abs(fdot(vectors["double_backward"], vectors["finite_difference"]))
    print(f"\ntop eigenvalue agreement: |FD - exact| / |exact| = "
          f"{abs(fd - exact) / abs(exact):.2e}; |<v_exact, v_FD>| = {overlap:.6f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
