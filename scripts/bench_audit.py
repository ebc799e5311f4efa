"""The quick audit at real size: its budget in gradients, what it spent, its minutes and CPU time.

For each model of `scripts/bench_scale.py` (built from code at full width, random weights and
data from a fixed seed), runs `audit(probe, budget="quick")` on a fresh probe and prints one
row: the budget it stated, the gradients its plan counts, the products, gradients and forward
passes it spent (counted by the probe), the time it took in gradients (wall time over one
gradient timed by the audit), in wall minutes and in CPU minutes of the process (the CPU time
does not grow when other jobs share the machine; with one torch thread it is the time on one
dedicated thread, up to the kernel's own page-zeroing), and the peak resident memory.

A second table sets the spectral density's trace (n times its mean, `DensityResult.trace`,
with `trace_stderr`) against the Hutch++ trace with its standard error, and their z score
(difference over the combined standard error). The eigenvalue row of each report follows, so
what it says about convergence can be read.

    python scripts/bench_audit.py --models gpt2 --threads 1
    python scripts/bench_audit.py --models vit_s resnet50 --threads 1 --out audit-runs
    python scripts/bench_audit.py --small                        # tiny widths: a smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from bench_scale import cases, make_probe, peak_bytes, peak_reset

from landscape import audit


def run(key: str, small: bool, max_gradients: float | None, out: str | None) -> dict:
    case = cases(small)[key]
    torch.manual_seed(0)
    model = case.build()
    probe = make_probe(case, model, case.data())
    peak_reset()
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def log(line: str) -> None:  # as it happens, with wall and CPU seconds since the start
        print(f"{time.perf_counter() - wall0:7.1f} s wall {time.process_time() - cpu0:7.1f} s "
              f"CPU  {line}", flush=True)

    report = audit(probe, budget="quick", seed=0, max_gradients=max_gradients, log=log,
                   name=key)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = peak_bytes()
    if out:
        report.write(os.path.join(out, key))
    log(f"done; {report.summary()}")
    return {"key": key, "case": case, "report": report, "wall": wall, "cpu": cpu,
            "peak": peak}


def budget_row(r: dict) -> str:
    rep = r["report"]
    plan, spent = rep.plan, rep.spent
    peak = "n/a" if r["peak"] is None else f"{r['peak'] / 2**30:.1f}"
    return (f"| {r['key']} | {rep.n_params / 1e6:.1f}M | {rep.gradient_seconds:.2f} | "
            f"{plan['budget_gradients']:g} | {plan['gradients']} ({plan['n_hvp']} products at "
            f"{plan['hvp_gradients']:g}, {plan['n_gradient']} gradients, {plan['n_forward']} "
            f"forward passes) | {spent['n_hvp']} / {spent['n_gradient']} / {spent['n_forward']} | "
            f"{rep.spent_gradients:.0f} | {r['wall'] / 60:.1f} | {r['cpu'] / 60:.1f} | {peak} |")


def trace_row(r: dict) -> str:
    res = r["report"].results
    tr, dens = res.get("hessian_trace"), res.get("hessian_density")
    if tr is None or dens is None:
        return f"| {r['key']} | not measured | | |"
    se = math.hypot(float(tr.stderr), float(dens.trace_stderr))
    z = (float(dens.trace) - float(tr.estimate)) / se if se > 0 else float("nan")
    return (f"| {r['key']} | {float(tr.estimate):.4g} ± {float(tr.stderr):.2g} ({tr.n_hvp} "
            f"products) | {float(dens.trace):.4g} ± {float(dens.trace_stderr):.2g} "
            f"({dens.n_vectors} x {dens.n_steps}) | {z:+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2"],
                        help="models of bench_scale.py (default: gpt2)")
    parser.add_argument("--max-gradients", type=float, default=None,
                        help="the audit's budget in gradients (default: the quick budget's)")
    parser.add_argument("--out", default=None, help="write each report to OUT/MODEL")
    parser.add_argument("--small", action="store_true", help="tiny widths: a smoke test")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}, float32, CPU", flush=True)
    runs = []
    for key in args.models:
        runs.append(run(key, args.small, args.max_gradients, args.out))
        print(budget_row(runs[-1]), flush=True)
    print("\n| model | params | one gradient, s | budget, gradients | plan, gradients | spent: "
          "products / gradients / forward passes | took, gradients of time | wall, min | CPU, "
          "min | peak RSS, GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(budget_row(r))
    print("\n| model | Hutch++ trace ± s.e. | density trace ± s.e. (vectors x steps) | z |")
    print("|---|---|---|---|")
    for r in runs:
        print(trace_row(r))
    for r in runs:
        rows = [line for line in r["report"].to_markdown().splitlines()
                if line.startswith(("| `hessian_eigenvalues`", "| `hessian_smallest",
                                    "| `hessian_trace`", "| `hessian_density`"))]
        print(f"\n{r['key']}:\n" + "\n".join(rows))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
