"""Speed-up of 2 gloo ranks over 1 (digits CNN, CPU): full-data calls, a surface, the top
eigenvalue.

Each rank is a process with one torch thread; the probe shards the batches of the full digits
data (1797 samples) across the ranks and all-reduces the sums. Both settings run in spawned
processes in a gloo group (world size 1 or 2), so start-up and first-use checks are outside the
timed region; the time of a setting is the slowest rank's, best of `--repeats` rounds (of `--calls`
calls each for the single calls). The surface is a `--grid` x `--grid` filter-normalized plane,
with the points sharded across the ranks (the default) and with the data sharded; the top
eigenvalue is `hessian_eigenvalues(k=1, tol=1e-3)` (Lanczos, each HVP data-sharded). On a shared
machine the speed-up is bounded by the free cores: read the load average printed with the table.

    python scripts/bench_distributed.py [--calls 5] [--repeats 3] [--batch-size 128] [--grid 9]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "tests")]  # this checkout's landscape and test helper
from helpers.distributed import run_on_ranks  # noqa: E402

from landscape import Probe, hessian_eigenvalues, loss_surface, random_direction  # noqa: E402
from landscape.data import digits_cnn, digits_tensors  # noqa: E402


def _timed(rank: int, world_size: int, calls: int, repeats: int, batch_size: int,
           grid: int) -> dict:
    x, y = digits_tensors("all", image=True)
    probe = Probe(digits_cnn(seed=0), (x, y), batch_size=batch_size)
    fresh = Probe(digits_cnn(seed=0), (x, y), batch_size=batch_size, hvp_method="double_backward")
    v = torch.randn(probe.num_params, generator=torch.Generator().manual_seed(0))
    probe.loss()  # first use: checks and the data cache
    probe.hvp(v)  # picks the HVP method (the same on every rank) and builds any kept graph
    fresh.hvp(v)
    out = {"hvp_method": probe.hvp_method_used, "n_samples": probe.n_samples}
    calls_by_name = [("loss", probe, probe.loss), ("hvp", probe, lambda: probe.hvp(v)),
                     ("hvp double_backward", fresh, lambda: fresh.hvp(v))]
    for name, owner, fn in calls_by_name:
        best = float("inf")
        for _ in range(repeats):
            torch.distributed.barrier()
            meter = owner.meter()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, time.perf_counter() - t0)
            out[f"{name}_batch_forward"] = meter.cost().n_batch_forward
        out[name] = best / calls
    out.update(_tasks(probe, repeats, grid))
    return out


def _tasks(probe: Probe, repeats: int, grid: int) -> dict:
    """Best-of-`repeats` seconds of a surface (points and data sharding) and the top eigenvalue,
    with this rank's batch forwards and HVPs."""
    d1 = random_direction(probe, normalization="filter", seed=1)
    d2 = random_direction(probe, normalization="filter", seed=2)
    xs = [-1.0 + 2.0 * i / (grid - 1) for i in range(grid)]
    loss_surface(probe, d1, d2, xs[:2], xs[:2], shard="points")  # the rank's copy of all the data
    tasks = {
        "surface, points sharded": lambda: loss_surface(probe, d1, d2, xs, xs, shard="points"),
        "surface, data sharded": lambda: loss_surface(probe, d1, d2, xs, xs, shard="data"),
        "top eigenvalue": lambda: hessian_eigenvalues(probe, k=1, tol=1e-3, seed=0),
    }
    out = {}
    for name, fn in tasks.items():
        best = float("inf")
        for _ in range(repeats):
            torch.distributed.barrier()
            meter = probe.meter()
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
            cost = meter.cost()
        out[name] = best
        out[f"{name}_work"] = f"{cost.n_batch_forward} fwd, {cost.n_hvp} hvp"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--grid", type=int, default=9)
    args = parser.parse_args()
    runs = {w: run_on_ranks(_timed, args.calls, args.repeats, args.batch_size, args.grid,
                            world_size=w, timeout=900) for w in (1, 2)}
    one, two = runs[1][0], runs[2]
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f}, 1 thread per rank, digits CNN, {one['n_samples']} samples, "
          f"batch size {args.batch_size}, 'hvp' is auto -> {one['hvp_method']} (1 rank) / "
          f"{two[0]['hvp_method']} (2 ranks), best of {args.repeats} x {args.calls} calls")
    print("| full-data call | 1 rank (ms) | 2 ranks (ms) | speed-up | batch forwards per "
          "call: 1 rank / each of 2 |")
    print("|---|---|---|---|---|")
    for name in ("loss", "hvp", "hvp double_backward"):
        t1, t2 = one[name], max(r[name] for r in two)
        f1 = one[f"{name}_batch_forward"] // args.calls
        f2 = "/".join(str(r[f"{name}_batch_forward"] // args.calls) for r in two)
        print(f"| {name} | {t1 * 1e3:.1f} | {t2 * 1e3:.1f} | {t1 / t2:.2f}x | {f1} / {f2} |")
    print()
    print(f"| task ({args.grid}x{args.grid} surface) | 1 rank (s) | 2 ranks (s) | speed-up | "
          "work: 1 rank / each of 2 |")
    print("|---|---|---|---|---|")
    for name in ("surface, points sharded", "surface, data sharded", "top eigenvalue"):
        t1, t2 = one[name], max(r[name] for r in two)
        work = " / ".join([one[f"{name}_work"]] + [r[f"{name}_work"] for r in two])
        print(f"| {name} | {t1:.2f} | {t2:.2f} | {t1 / t2:.2f}x | {work} |")


if __name__ == "__main__":
    main()
