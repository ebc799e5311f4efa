"""What the CurvatureMonitor costs a training run, and the products its warm start saves.

Trains the demo's recipes (`landscape.demo.RECIPES`: the digits BatchNorm CNN, SGD at batch 16
and Adam at batch 32, 15 epochs each) from the same seed: without the monitor, with it at its
defaults (every=100 steps within a 5% time budget; top eigenvalue, eos_ratio, gradient norm;
tol 1e-3), and at every=100 without the budget, on a fixed measurement set of 256 training
samples. Prints the training time of each run and the overhead, then the Lanczos products per
measurement: warm-started (the monitor's) against cold (a fresh monitor on the same weights,
run beside it and left out of the timing). All runs end with bitwise the same weights.

    python scripts/bench_monitor.py [--recipes sgd_small_batch adam] [--samples 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from landscape import CurvatureMonitor
from landscape.data import digits_cnn, digits_tensors
from landscape.demo import RECIPES


def run(recipe: str, samples: int, monitored: bool, seed: int = 0, **options) -> dict:
    batch_size, kind, lr, epochs = RECIPES[recipe]
    x, y = digits_tensors("train", image=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    model = digits_cnn(seed=seed)
    opt = (torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if kind == "sgd"
           else torch.optim.Adam(model.parameters(), lr=lr))
    data = (x[:samples], y[:samples])
    monitor = CurvatureMonitor(model, data, optimizer=opt, **options) if monitored else None
    warm, cold, aside, step = [], [], 0.0, 0
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            step += 1
            row = monitor.step(step) if monitor is not None else None
            if row is not None:
                t1 = time.perf_counter()
                fresh = CurvatureMonitor(model, data, measures=("top_eigenvalue",))
                cold.append(fresh.measure(step)["top_eigenvalue_n_hvp"])
                warm.append(row["top_eigenvalue_n_hvp"])
                aside += time.perf_counter() - t1
    seconds = time.perf_counter() - t0 - aside
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return dict(seconds=seconds, steps=step, warm=warm, cold=cold, weights=weights,
                measured=sum(r["seconds"] for r in monitor.rows) if monitor else 0.0,
                rows=[r["step"] for r in monitor.rows] if monitor else [])


def same_weights(samples: int, seed: int = 0) -> str:
    """One measurement from a random start, then one warm-started at the same weights, and one
    training step at batch 16, on the demo CNN after a short training."""
    x, y = digits_tensors("train", image=True)
    model = digits_cnn(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    monitor = CurvatureMonitor(model, (x[:samples], y[:samples]), optimizer=opt, budget=None)
    cold, warm = monitor.measure(0), monitor.measure(0)
    model.train()
    t0 = time.perf_counter()
    for i in range(20):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x[16 * i:16 * i + 16]),
                                          y[16 * i:16 * i + 16]).backward()
        opt.step()
    step = (time.perf_counter() - t0) / 20
    return (f"same weights: cold {cold['top_eigenvalue_n_hvp']} products in "
            f"{cold['seconds']:.3f} s, warm {warm['top_eigenvalue_n_hvp']} products in "
            f"{warm['seconds']:.3f} s; one training step at batch 16: {1000 * step:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["sgd_small_batch", "adam"])
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, measurement set "
          f"{args.samples} samples, monitor defaults (every=100, top_eigenvalue, eos_ratio, "
          "gradient_norm)")
    print(same_weights(args.samples))
    for recipe in args.recipes:
        plain = run(recipe, args.samples, monitored=False)
        for title, options in (("default schedule (every=100, budget=0.05)", {}),
                               ("every=100 without the budget", {"budget": None})):
            watched = run(recipe, args.samples, monitored=True, **options)
            same = torch.equal(plain["weights"], watched["weights"])
            warm, cold = np.array(watched["warm"]), np.array(watched["cold"])
            overhead = watched["seconds"] / plain["seconds"] - 1
            print(f"{recipe}, {title}: {plain['steps']} steps, measured at steps "
                  f"{watched['rows']}; training {plain['seconds']:.2f} s without, "
                  f"{watched['seconds']:.2f} s with the monitor: overhead "
                  f"{100 * overhead:.1f}% (the measurements themselves "
                  f"{100 * watched['measured'] / plain['seconds']:.1f}%); same weights: {same}")
            if len(warm) > 1:
                print(f"  Lanczos products per measurement (the check included): warm mean "
                      f"{warm[1:].mean():.1f} (first {warm[0]}), cold mean "
                      f"{cold[1:].mean():.1f} on the same weights; saved "
                      f"{cold[1:].sum() - warm[1:].sum()} of {cold[1:].sum()} after the first "
                      f"({100 * (1 - warm[1:].sum() / cold[1:].sum()):.0f}%)")

if __name__ == "__main__":
    main()
