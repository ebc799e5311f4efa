"""Barriers between independently trained tiny transformers, before and after weight matching.

Trains pairs of GPT-2-style models (`landscape.data.sequence.tiny_gpt`, 1 layer, width 32,
4 heads, tied embeddings) from different seeds on the modular-sum task, then measures the loss
barrier on held-out sequences along the straight line between the two, raw and after permutation
alignment (`landscape.aligned_barrier`). Two training regimes: "partly trained" (Adam, lr 1e-3,
8 epochs) and "trained to ~0 loss" (Adam, lr 3e-3, 8 epochs).

Usage:
    .venv/bin/python scripts/align_transformers.py            # three seed pairs per regime
    .venv/bin/python scripts/align_transformers.py --pairs 1  # one pair (about 30 s)
"""

from __future__ import annotations

import argparse
import time

import torch

from landscape import Probe, aligned_barrier
from landscape.data.sequence import modular_sum_tensors, sequence_loss, trained_tiny_gpt

REGIMES = {"partly trained": 1e-3, "trained to ~0 loss": 3e-3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="seed pairs per regime")
    args = parser.parse_args()
    torch.set_num_threads(1)
    test = modular_sum_tensors(512, seed=1)
    print("| regime | seeds | loss A | loss B | raw barrier | aligned barrier | raw distance "
          "| aligned distance |")
    print("|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for regime, lr in REGIMES.items():
        for k in range(args.pairs):
            seeds = (2 * k, 2 * k + 1)
            a, b = (trained_tiny_gpt(seed=s, lr=lr) for s in seeds)
            res = aligned_barrier(Probe(a, test, sequence_loss), b, alphas=[0.25, 0.5, 0.75])
            print(f"| {regime} | {seeds} | {res.raw.loss[0]:.3f} | {res.raw.loss[-1]:.3f} | "
                  f"{res.raw.loss_barrier:.3f} | {res.aligned.loss_barrier:.3f} | "
                  f"{res.raw.distance:.2f} | {res.aligned.distance:.2f} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s, torch {torch.__version__}, 1 thread")


if __name__ == "__main__":
    main()
