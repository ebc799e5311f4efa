"""Cost of one Hessian-vector product relative to one gradient, per HVP method.

On the digits MLP and CNN (trained briefly, 1024 probe samples) this times a full-data gradient
and a full-data HVP with each method, best of several interleaved repeats, and prints the ratio
HVP / gradient, plus the method the probe picks with hvp_method="auto".

    python scripts/bench_probe.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import torch

from landscape import Probe
from landscape.data import digits_cnn, digits_loaders, digits_mlp, digits_tensors
from landscape.data.training import train

METHODS = ("cached_graph", "double_backward", "forward_over_reverse")


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(name: str, model, image: bool, repeats: int, batch_size: int) -> list[str]:
    x, y = digits_tensors("train", image=image)
    data = (x[:1024], y[:1024])
    probes = {m: Probe(model, data, hvp_method=m, batch_size=batch_size) for m in METHODS}
    auto = Probe(model, data, batch_size=batch_size)
    v = torch.randn(auto.num_params, generator=torch.Generator().manual_seed(0))
    for p in [*probes.values(), auto]:  # warm up: first-use checks, caches, kept graphs
        p.gradient()
        p.hvp(v)
    grad_t = best_time(auto.gradient, repeats)
    hvp_t = {m: 0.0 for m in METHODS}
    for m in METHODS:  # interleave to spread the machine's noise
        hvp_t[m] = best_time(lambda p=probes[m]: p.hvp(v), repeats)
    picked = auto.hvp_method_used
    auto_t = best_time(lambda: auto.hvp(v), repeats)
    rows = []
    for m in METHODS:
        rows.append(f"| {name} | {m} | {hvp_t[m] * 1e3:.2f} | {hvp_t[m] / grad_t:.2f} |")
    rows.append(f"| {name} | auto -> {picked} | {auto_t * 1e3:.2f} | {auto_t / grad_t:.2f} |")
    rows.insert(0, f"| {name} | (one gradient) | {grad_t * 1e3:.2f} | 1.00 |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=256,
                        help="probe batch size (the 1024 samples are split into batches)")
    args = parser.parse_args()
    torch.manual_seed(0)
    loader, _ = digits_loaders(batch_size=64)
    mlp = train(digits_mlp(seed=0), loader, epochs=3, lr=0.05)
    img_loader, _ = digits_loaders(batch_size=64, image=True)
    cnn = train(digits_cnn(seed=0), img_loader, epochs=3, lr=0.05)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch size {args.batch_size}, best of {args.repeats}")
    print("| model | HVP method | ms per full-data product | gradients per HVP |")
    print("|---|---|---|---|")
    for row in bench("MLP", mlp, False, args.repeats, args.batch_size):
        print(row)
    for row in bench("CNN", cnn, True, args.repeats, args.batch_size):
        print(row)


if __name__ == "__main__":
    main()
