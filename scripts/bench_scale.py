"""Curvature on real architectures at real sizes: products, time in gradients, memory in vectors.

Builds, from code (no downloads), models at the widths users bring: a GPT-2-small-sized causal
language model with tied embeddings and a custom batch loss, a ViT-B, a ConvNeXt-T, a ResNet-34
and a two-layer LSTM (20M-124M parameters), on random data (inputs and labels drawn from a fixed
seed; the weights are the random initialization, since nothing can be downloaded here).

For every model it prints:

* `grad s`: one full-data gradient (median of 3 after a warm-up): the unit of time;
* `fresh k=1 @1e-3`: `hessian_eigenvalues(k=1, tol=1e-3)` on a *fresh* probe (first-use data
  checks, HVP-method choice and all included): products, and wall time per product in gradients
  (target <= 5 on transformers);
* `hvp/grad`: one product in steady state, in gradients (target <= 3);

and with `--full` (by default for the ViT-B, the 64M+ target model), at the default tol 1e-4:

* `k=1`, `k=3`: products (targets <= 30 and <= 45), wall time per product in gradients (<= 6),
  the vectors the estimator says it stored, and the measured peak resident memory beyond that of
  a lone product, in parameter-sized vectors (target <= 12);
* `hutch++ 30`, `density 1x30`: the same for `hessian_trace(method="hutch++", n_hvp=30)` and
  `hessian_density(n_vectors=1, n_steps=30)`.

Peak memory is read from /proc/self/status (VmHWM after resetting it through
/proc/self/clear_refs), so it needs Linux; elsewhere it prints "n/a".

    python scripts/bench_scale.py                      # all models, --full on vit_b
    python scripts/bench_scale.py --models gpt2 --full gpt2
    python scripts/bench_scale.py --small              # tiny widths: a smoke test in seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from landscape import Probe, hessian_density, hessian_eigenvalues, hessian_trace
from landscape.data.architectures import (
    causal_lm_loss,
    convnext,
    gpt2_lm,
    image_data,
    lstm_classifier,
    resnet,
    token_data,
    vit,
)


@dataclass
class Case:
    name: str
    build: Callable[[], torch.nn.Module]
    data: Callable[[], Any]
    batch_loss: Callable | None = None


def cases(small: bool) -> dict[str, Case]:
    """The models at realistic widths (or tiny ones with `small`), each with its data."""
    s = small

    def lstm_data():
        tokens = token_data(16, 32, 100 if s else 10000, seed=1)
        return tokens, torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(2))

    return {
        "vit_b": Case(
            "ViT-B (patch 8 on 32x32 images)",
            lambda: vit(image_size=32, patch_size=8, width=32 if s else 768,
                        depth=2 if s else 12, heads=4 if s else 12),
            lambda: image_data(4, image_size=32, seed=1)),
        "gpt2": Case(
            "GPT-2 small (tied embeddings, causal LM batch loss)",
            lambda: gpt2_lm(vocab_size=500 if s else 50257, context=64, width=32 if s else 768,
                            depth=2 if s else 12, heads=4 if s else 12),
            lambda: [{"input_ids": token_data(2, 17, 500 if s else 50257, seed=i)}
                     for i in range(2)],
            causal_lm_loss),
        "convnext_t": Case(
            "ConvNeXt-T (32x32 images)",
            lambda: convnext(dims=(8, 16, 32, 64) if s else (96, 192, 384, 768),
                             depths=(1, 1, 1, 1) if s else (3, 3, 9, 3)),
            lambda: image_data(8, image_size=32, seed=1)),
        "resnet34": Case(
            "ResNet-34 (32x32 images)",
            lambda: resnet(widths=(8, 16, 32, 64) if s else (64, 128, 256, 512),
                           blocks=(1, 1, 1, 1) if s else (3, 4, 6, 3)),
            lambda: image_data(8, image_size=32, seed=1)),
        "lstm": Case(
            "LSTM classifier (2 layers of 1024, embedding 512)",
            lambda: lstm_classifier(vocab_size=100 if s else 10000, embed=16 if s else 512,
                                    hidden=16 if s else 1024, layers=2),
            lstm_data),
    }


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


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int | None]:
    """(result, seconds, peak resident bytes during the call)."""
    peak_reset()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, peak_bytes()


def make_probe(case: Case, model: torch.nn.Module, data: Any) -> Probe:
    if case.batch_loss is not None:
        return Probe(model, data, batch_loss=case.batch_loss)
    return Probe(model, data, batch_size=len(data[0]))


def bench(key: str, case: Case, full: bool) -> list[str]:
    torch.manual_seed(0)
    model = case.build()
    data = case.data()
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    vec_bytes = 4 * n
    rows = []

    # a fresh probe: the first call pays every fixed cost
    fresh = make_probe(case, model, data)
    first, first_s, _ = measured(lambda: hessian_eigenvalues(fresh, k=1, tol=1e-3, seed=0))

    probe = make_probe(case, model, data)
    probe.gradient()  # warm-up (first-use checks)
    grad_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        probe.gradient()
        grad_times.append(time.perf_counter() - t0)
    grad_s = statistics.median(grad_times)
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))
    probe.hvp(v)  # warm-up: the method choice (and the kept graph)
    hvp_times = []
    for _ in range(3):
        _, s, base_peak = measured(lambda: probe.hvp(v))
        hvp_times.append(s)
    hvp_s = statistics.median(hvp_times)
    rows.append(
        f"| {key} | {n / 1e6:.1f}M | {grad_s:.2f} | {first.n_hvp} | "
        f"{first_s / first.n_hvp / grad_s:.2f} | {hvp_s / grad_s:.2f} | "
        f"{probe.hvp_method_used} |")
    print(rows[-1], flush=True)
    if not full:
        return rows

    def memory(peak: int | None) -> str:
        if peak is None or base_peak is None:
            return "n/a"
        return f"{max(peak - base_peak, 0) / vec_bytes:.1f}"

    runs = {
        "k=1": lambda: hessian_eigenvalues(probe, k=1, seed=0),
        "k=3": lambda: hessian_eigenvalues(probe, k=3, seed=0),
        "hutch++ 30": lambda: hessian_trace(probe, method="hutch++", n_hvp=30, seed=0),
        "density 1x30": lambda: hessian_density(probe, n_vectors=1, n_steps=30, seed=0),
    }
    for label, run in runs.items():
        res, seconds, peak = measured(run)
        extra = ""
        if hasattr(res, "converged"):
            extra = f"converged={res.converged}, top={res.eigenvalues[0]:.4g}"
        rows.append(f"| {key} | {label} | {res.n_hvp} | {seconds / res.n_hvp / grad_s:.2f} | "
                    f"{res.stored_vectors} | {memory(peak)} | {extra} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="which models (default: all): gpt2 vit_b convnext_t resnet34 lstm")
    parser.add_argument("--full", nargs="*", default=None,
                        help="models that also get the memory and product targets "
                             "(default: vit_b)")
    parser.add_argument("--small", action="store_true", help="tiny widths: a smoke test")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = cases(args.small)
    models = args.models or list(table)
    unknown = [m for m in models if m not in table]
    if unknown:
        parser.error(f"unknown models {unknown}; choose among {list(table)}")
    full = {"vit_b"} if args.full is None else set(args.full)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}, float32, CPU")
    print("| model | params | grad s | fresh k=1 @1e-3: products | gradients per product, "
          "first call included | hvp/grad steady | HVP method |")
    print("|---|---|---|---|---|---|---|")
    full_rows = []
    for key in models:
        rows = bench(key, table[key], key in full)
        full_rows += rows[1:]
    if full_rows:
        print("\n| model | run | products | gradients per product | stored vectors | "
              "peak memory beyond one product, vectors | |")
        print("|---|---|---|---|---|---|---|")
        for row in full_rows:
            print(row)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
