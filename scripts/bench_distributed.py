"""Speed-up of 2 gloo ranks over 1 for repeated full-data losses and HVPs (digits CNN, CPU).

Each rank is a process with one torch thread; the probe shards the batches of the full digits
data (1797 samples) across the ranks and all-reduces the sums. Both settings run in spawned
processes in a gloo group (world size 1 or 2), so start-up and first-use checks are outside the
timed region; the time of a setting is the slowest rank's, best of `--repeats` rounds of `--calls`
calls each. On a shared machine the speed-up is bounded by the free cores: read the load average
printed with the table.

    python scripts/bench_distributed.py [--calls 5] [--repeats 5] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "tests")]  # this checkout's landscape and test helper
from distributed_util import run_on_ranks  # noqa: E402

from landscape import Probe  # noqa: E402
from landscape.data import digits_cnn, digits_tensors  # noqa: E402


def _timed(rank: int, world_size: int, calls: int, repeats: int, batch_size: int) -> dict:
    x, y = digits_tensors("all", image=True)
    probe = Probe(digits_cnn(), (x, y), batch_size=batch_size)
    fresh = Probe(digits_cnn(), (x, y), batch_size=batch_size, hvp_method="double_backward")
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
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    runs = {w: run_on_ranks(_timed, args.calls, args.repeats, args.batch_size, world_size=w,
                            timeout=600) for w in (1, 2)}
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


if __name__ == "__main__":
    main()
