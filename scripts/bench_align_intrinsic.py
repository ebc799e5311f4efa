"""Benchmark: aligned barriers between independently trained digits networks, and the
intrinsic dimension of the digits MLP (Li et al. 2018). Prints markdown tables."""

from __future__ import annotations

import time

import torch

from landscape import Probe, aligned_barrier, intrinsic_dimension
from landscape.data import digits_cnn, digits_mlp, digits_resnet, digits_tensors
from landscape.data.training import train


def barriers() -> None:
    print("Barriers on the training data (21 points; BatchNorm statistics recomputed per point)")
    print("| model | loss barrier raw | aligned | error barrier raw | aligned | "
          "distance raw | aligned | align s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, build, image in [
        ("MLP 64-32-32-10", lambda s: digits_mlp(hidden=32, seed=s), False),
        ("CNN (8, 16 ch, BN)", lambda s: digits_cnn(channels=8, seed=s), True),
        ("ResNet (8 ch, 3 blocks)", lambda s: digits_resnet(seed=s), True),
    ]:
        x, y = digits_tensors("train", image=image)
        loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
        a = train(build(0), loader, epochs=20, lr=0.05, seed=0)
        b = train(build(1), loader, epochs=20, lr=0.05, seed=1)
        bn = dict(buffers="recompute", bn_data=x) if image else {}
        r = aligned_barrier(Probe(a, (x, y)), b, **bn)
        print(f"| {name} | {r.raw.loss_barrier:.3f} | {r.aligned.loss_barrier:.3f} | "
              f"{r.raw.error_barrier:.3f} | {r.aligned.error_barrier:.3f} | "
              f"{r.raw.distance:.1f} | {r.aligned.distance:.1f} | {r.alignment.seconds:.2f} |")


def intrinsic() -> None:
    train_data, test_data = digits_tensors("train"), digits_tensors("test")
    t = time.perf_counter()
    r = intrinsic_dimension(digits_mlp(seed=0), train_data, test_data,
                            [10, 25, 50, 100, 200, 400, 800], epochs=20, lr=0.01, seed=0)
    print(f"\nn = {r.n_params}, baseline accuracy {r.baseline:.3f}, target {r.target:.3f}, "
          f"d_int90 = {r.d_int90}, {time.perf_counter() - t:.1f} s in all\n")
    print("| d | projection | test accuracy | test loss | seconds |")
    print("|---|---|---|---|---|")
    for d, kind, acc, loss, s in zip(r.dims, r.projection, r.accuracy, r.loss,
                                     r.seconds_per_dim):
        print(f"| {d} | {kind} | {acc:.3f} | {loss:.3f} | {s:.1f} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    barriers()
    intrinsic()
