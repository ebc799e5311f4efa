"""Curvature on real architectures at real sizes: products, time in gradients, memory in vectors.

Builds, from code (no downloads), the models of issue 19 at the widths users bring: a
ResNet-50 (bottleneck blocks), a ConvNeXt-T, a ViT-S, a GPT-2-small-sized causal language model
with tied embeddings and a custom batch loss, and a 2 x 512 LSTM language model (14M-124M
parameters), on random data (inputs and labels drawn from a fixed seed; the weights are the
random initialization, since nothing can be downloaded here).

For every model it prints one row:

* `grad s`: one full-data gradient (median of 3 after a warm-up): the unit of time, in CPU
  seconds of this process (`time.process_time`; with one torch thread, what the work cost
  whatever else the machine runs) and in wall seconds;
* `fresh k=1 @1e-3`: `hessian_eigenvalues(k=1, tol=1e-3)` on a *fresh* probe (first-use data
  checks, HVP-method choice and all included): products, converged, and time per product
  in gradients (target <= 4), by CPU time (the load-robust number) and by wall time;
* `peak`: the peak resident memory during that call minus the peak of a plain gradient on a
  warm probe (under the same heap guard as the call), in parameter-sized vectors (target
  <= 12), next to the `peak_vectors` and `stored_vectors` the estimator reports;
* `hvp/grad`: one product in steady state, in gradients of CPU time (the median of three
  products each divided by a gradient timed just before it), and the HVP method the call used
  with the kept graph's measured size and the one-line reason.

The unit of the first call is the median of the gradients timed before it and right after it.

With `--full MODEL ...`, at the default tol 1e-4 on a warm probe: `k=1`, `k=3`,
`hessian_trace(method="hutch++", n_hvp=30)` and `hessian_density(n_vectors=1, n_steps=30)`,
each with products, gradients per product, stored vectors and the same peak memory.
With `--audit MODEL ...`: `audit(probe, budget="quick")`, its minutes, its time in gradients
against the budget it states, and whether its top eigenvalues converged.

Peak memory is read from /proc/self/status (VmHWM after resetting it through
/proc/self/clear_refs), so it needs Linux; elsewhere it prints "n/a". Each measurement starts
with no free heap pages resident (glibc's `malloc_trim`), and before each model a top-1 on its
tiny variant pages in the code of the kernels its products use, so that neither a gradient's
peak nor the call's depends on what ran before it in the process (ResNet-50's measured peak
moved by 7 vectors with its place in the run before).

    python scripts/bench_scale.py --threads 1               # all five models
    python scripts/bench_scale.py --models gpt2 --full gpt2 --audit gpt2
    python scripts/bench_scale.py --small                   # tiny widths: a smoke test
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from landscape import Probe, audit, hessian_density, hessian_eigenvalues, hessian_trace
from landscape.data.architectures import (
    causal_lm_loss,
    convnext,
    gpt2_lm,
    image_data,
    lstm_lm,
    resnet,
    token_data,
    vit,
)
from landscape.hvp_memory import heap_guarded, release_free_heap


@dataclass
class Case:
    name: str
    build: Callable[[], torch.nn.Module]
    data: Callable[[], Any]
    batch_loss: Callable | None = None


def cases(small: bool) -> dict[str, Case]:
    """The models at realistic widths (or tiny ones with `small`), each with its data."""
    s = small

    def tokens(n_batches: int, rows: int, length: int, vocab: int):
        return [{"input_ids": token_data(rows, length, vocab, seed=i)} for i in range(n_batches)]

    return {
        "resnet50": Case(
            "ResNet-50 (bottleneck blocks, 32x32 images, batch 8)",
            lambda: resnet(widths=(8, 16, 32, 64) if s else (64, 128, 256, 512),
                           blocks=(1, 1, 1, 1) if s else (3, 4, 6, 3), bottleneck=True),
            lambda: image_data(8, image_size=32, seed=1)),
        "convnext_t": Case(
            "ConvNeXt-T (32x32 images, batch 8)",
            lambda: convnext(dims=(8, 16, 32, 64) if s else (96, 192, 384, 768),
                             depths=(1, 1, 1, 1) if s else (3, 3, 9, 3)),
            lambda: image_data(8, image_size=32, seed=1)),
        "vit_s": Case(
            "ViT-S (patch 4 on 32x32 images, width 384, depth 12, batch 8)",
            lambda: vit(image_size=32, patch_size=4, width=32 if s else 384,
                        depth=2 if s else 12, heads=4 if s else 6),
            lambda: image_data(8, image_size=32, seed=1)),
        "gpt2": Case(
            "GPT-2 small (tied embeddings, causal LM batch loss, 2 batches of 2x17 tokens)",
            lambda: gpt2_lm(vocab_size=500 if s else 50257, context=64, width=32 if s else 768,
                            depth=2 if s else 12, heads=4 if s else 12),
            lambda: tokens(2, 2, 17, 500 if s else 50257),
            causal_lm_loss),
        "lstm_lm": Case(
            "LSTM LM (2 x 512, embedding 512, vocabulary 10k, 2 batches of 4x33 tokens)",
            lambda: lstm_lm(vocab_size=100 if s else 10000, embed=16 if s else 512,
                            hidden=16 if s else 512, layers=2),
            lambda: tokens(2, 4, 33, 100 if s else 10000),
            causal_lm_loss),
        "vit_b": Case(
            "ViT-B (patch 8 on 32x32 images, batch 4)",
            lambda: vit(image_size=32, patch_size=8, width=32 if s else 768,
                        depth=2 if s else 12, heads=4 if s else 12),
            lambda: image_data(4, image_size=32, seed=1)),
    }


DEFAULT_MODELS = ("convnext_t", "lstm_lm", "vit_s", "gpt2", "resnet50")  # the slowest last


def peak_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int | None, float]:
    """(result, wall seconds, peak resident bytes during the call, CPU seconds). The call
    starts with no free heap pages resident (glibc's `malloc_trim`), so its peak does not
    depend on what ran before it in the process."""
    gc.collect()
    release_free_heap()
    peak_reset()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    cpu = time.process_time() - c0
    seconds = time.perf_counter() - t0
    return out, seconds, peak_bytes(), cpu


def make_probe(case: Case, model: torch.nn.Module, data: Any) -> Probe:
    if case.batch_loss is not None:
        return Probe(model, data, batch_loss=case.batch_loss)
    return Probe(model, data, batch_size=len(data[0]))


def gradient_baseline(case: Case, model: torch.nn.Module, data: Any
                      ) -> tuple[float, int | None, float]:
    """(wall seconds of one full-data gradient, median of 3 after a warm-up; peak resident
    bytes of a plain gradient on a warm probe, measured under the heap guard the curvature
    estimators run under (`landscape.hvp_memory.HeapGuard`), so that both peaks are what is
    alive plus at most the guard's step of free heap pages; CPU seconds, median of 3)."""
    probe = make_probe(case, model, data)
    probe.gradient()  # warm-up (first-use checks)
    times, cpus = [], []
    for _ in range(3):
        _, seconds, _, cpu = measured(probe.gradient)
        times.append(seconds)
        cpus.append(cpu)
    with heap_guarded(probe.num_params * probe.dtype.itemsize):
        _, _, peak, _ = measured(probe.gradient)
    return statistics.median(times), peak, statistics.median(cpus)


def warm_code(small: Case) -> None:
    """A top-1 on the tiny model of the same family: the first products in a process page in
    the code of the kernels they use (shared, file-backed: about a vector of ConvNeXt-T at
    its first double backward), which is not memory the measured call holds."""
    torch.manual_seed(0)
    model = small.build()
    hessian_eigenvalues(make_probe(small, model, small.data()), k=1, tol=1e-3, seed=0)


def bench(key: str, case: Case, full: bool, run_audit: bool, small: Case) -> list[str]:
    warm_code(small)
    torch.manual_seed(0)
    model = case.build()
    data = case.data()
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    vec_bytes = 4 * n
    grad_s, grad_peak, grad_cpu = gradient_baseline(case, model, data)

    def memory(peak: int | None) -> str:
        if peak is None or grad_peak is None:
            return "n/a"
        return f"{(peak - grad_peak) / vec_bytes:.1f}"

    # a fresh probe: the first call pays every fixed cost
    fresh = make_probe(case, model, data)
    first, first_s, first_peak, first_cpu = measured(
        lambda: hessian_eigenvalues(fresh, k=1, tol=1e-3, seed=0))
    engine = fresh.products.engine
    graph = "" if engine.graph_bytes_measured is None else \
        f", graph {engine.graph_bytes_measured / vec_bytes:.2f} vectors"
    chosen = f"{first.hvp_method}{graph}: {first.hvp_reason}"
    del fresh, engine
    probe = make_probe(case, model, data)
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))
    probe.gradient()
    probe.hvp(v)  # warm-up: the method choice (and the kept graph)
    # a gradient and a product back to back, three times: each ratio under the same load
    pairs = [(measured(probe.gradient)[3], measured(lambda: probe.hvp(v))[3]) for _ in range(3)]
    hvp_ratio = statistics.median(h / g for g, h in pairs)
    # the unit of the first call: gradients timed before it and right after it
    grad_cpu = statistics.median([grad_cpu, *(g for g, _ in pairs)])
    rows = [
        f"| {key} | {n / 1e6:.1f}M | {grad_cpu:.2f} / {grad_s:.2f} | {first.n_hvp} | "
        f"{first.converged} | {first_cpu / first.n_hvp / grad_cpu:.2f} / "
        f"{first_s / first.n_hvp / grad_s:.2f} | {memory(first_peak)} | "
        f"{first.peak_vectors:.1f} | {first.stored_vectors} | {hvp_ratio:.2f} | {chosen} |"]
    print(rows[-1], flush=True)
    if full:
        runs = {
            "k=1": lambda: hessian_eigenvalues(probe, k=1, seed=0),
            "k=3": lambda: hessian_eigenvalues(probe, k=3, seed=0),
            "hutch++ 30": lambda: hessian_trace(probe, method="hutch++", n_hvp=30, seed=0),
            "density 1x30": lambda: hessian_density(probe, n_vectors=1, n_steps=30, seed=0),
        }
        for label, run in runs.items():
            res, seconds, peak, _ = measured(run)
            extra = ""
            if hasattr(res, "converged"):
                extra = f"converged={res.converged}, top={res.eigenvalues[0]:.4g}"
            rows.append(f"| {key} | {label} | {res.n_hvp} | "
                        f"{seconds / res.n_hvp / grad_s:.2f} | {res.stored_vectors} | "
                        f"{memory(peak)} | {extra} |")
            print(rows[-1], flush=True)
    if run_audit:
        fresh = make_probe(case, model, data)
        report, seconds, peak, _ = measured(lambda: audit(fresh, budget="quick", seed=0))
        eig = report.measures.get("hessian_eigenvalues")
        converged = None if eig is None else eig.details.get("converged")
        budget = report.plan.get("gradients", "n/a")
        rows.append(f"| {key} | quick audit | {seconds / 60:.1f} min | "
                    f"{seconds / grad_s:.0f} gradients (budget {budget}) | {memory(peak)} | "
                    f"top-5 converged={converged} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"which models (default: {' '.join(DEFAULT_MODELS)}; also vit_b)")
    parser.add_argument("--full", nargs="*", default=(),
                        help="models that also get k=1, k=3, Hutch++ and SLQ at default tol")
    parser.add_argument("--audit", nargs="*", default=(),
                        help="models that also get a quick audit")
    parser.add_argument("--small", action="store_true", help="tiny widths: a smoke test")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = cases(args.small)
    models = args.models or list(DEFAULT_MODELS)
    unknown = [m for m in [*models, *args.full, *args.audit] if m not in table]
    if unknown:
        parser.error(f"unknown models {unknown}; choose among {list(table)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}, float32, CPU")
    print("| model | params | grad s, CPU / wall | fresh k=1 @1e-3: products | converged | "
          "gradients per product, first call included, CPU / wall | peak beyond a gradient's, "
          "vectors, measured | peak_vectors reported | stored vectors | hvp/grad steady, CPU | "
          "HVP method: reason |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    extra_rows = []
    for key in models:
        rows = bench(key, table[key], key in args.full, key in args.audit, cases(True)[key])
        extra_rows += rows[1:]
    if extra_rows:
        print("\n| model | run | products (or minutes) | gradients per product (or in all) | "
              "stored vectors | peak beyond a gradient's, vectors | |")
        print("|---|---|---|---|---|---|---|")
        for row in extra_rows:
            print(row)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
