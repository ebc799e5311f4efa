"""The heap guard's cost and effect: a fresh top-1 with and without it, back to back.

For each model (those of `scripts/bench_scale.py`), `hessian_eigenvalues(k=1, tol=1e-3)` on a
fresh probe twice in one process, with the heap guard (`landscape.hvp_memory.HeapGuard`) and
without it (as if a guard were already running: none starts): wall and CPU seconds, the heap
releases made by the guard's thread and by the graph build's `HeapRelease`, and the peak
resident memory beyond a gradient's (measured as in `scripts/bench_scale.py`), against the
`peak_vectors` reported.

    python scripts/check_heap_guard.py --threads 1 --models lstm_lm convnext_t
"""

from __future__ import annotations

import argparse
import threading
from collections import Counter

import torch
from bench_scale import cases, gradient_baseline, make_probe, measured, warm_code

from landscape import hessian_eigenvalues, hvp_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["lstm_lm", "convnext_t"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="tiny widths: a smoke test")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    releases: Counter[str] = Counter()
    real = hvp_memory.release_free_heap

    def counted() -> bool:
        releases[threading.current_thread().name] += 1
        return real()

    hvp_memory.release_free_heap = counted
    print("| model | guard | products | wall s | CPU s | releases: guard / graph build and "
          "others | peak beyond a gradient's, measured | peak_vectors reported |")
    print("|---|---|---|---|---|---|---|---|")
    for key in args.models:
        case = cases(args.small)[key]
        warm_code(cases(True)[key])
        torch.manual_seed(0)
        model, data = case.build(), case.data()
        _, grad_peak, _ = gradient_baseline(case, model, data)
        vector = 4 * sum(p.numel() for p in model.parameters())
        for guard in (True, False):
            releases.clear()
            hvp_memory._guard_depth[0] += 0 if guard else 1  # a running guard: none starts
            probe = make_probe(case, model, data)
            try:
                res, wall, peak, cpu = measured(
                    lambda: hessian_eigenvalues(probe, k=1, tol=1e-3, seed=0))  # noqa: B023
            finally:
                hvp_memory._guard_depth[0] -= 0 if guard else 1
            ours = releases.pop("landscape-heap-guard", 0)
            beyond = "n/a" if peak is None or grad_peak is None else \
                f"{(peak - grad_peak) / vector:.1f}"
            print(f"| {key} | {'on' if guard else 'off'} | {res.n_hvp} | {wall:.1f} | {cpu:.1f} | "
                  f"{ours} / {sum(releases.values())} | {beyond} | {res.peak_vectors:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
