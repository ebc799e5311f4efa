"""Benchmark: 21x21 filter-normalized loss surface of the digits MLP and CNN on 1024 samples.

Compares, in one run and on the same model, samples and grid:

* landscape: `loss_surface` with a fresh Probe (its first-use checks included in the time), with
  the per-point loop (`batched=False`, the CPU default) and with the vmap path (`batched=True`),
  and the loop over a user's DataLoader of batch 256 (evaluation merges the cached batches);
* loss-landscapes: `random_plane(..., normalization="filter", deepcopy_model=True)` (its metric
  evaluates all 1024 samples in one forward, like our cached batch);
* a tomgoldstein/loss-landscape style loop (`plot_surface.py` -> `crunch` -> `set_weights`,
  `evaluation.eval_loss`): per point set the weights to w + a d1 + b d2 (new tensors, its
  `p.data = w + d`), then iterate a DataLoader (batch 128, its default) computing loss and
  accuracy with `.item()` per batch. Same filter-normalized directions as ours. It is kept
  favourable to the original: tensors in memory (the original decodes CIFAR images through
  torchvision transforms every point), `num_workers=0` (the original's `--threads 2` starts two
  worker processes per point), no h5 write and print per point;
* the same loop "as shipped": each sample decoded from uint8 pixels and normalized in the
  Dataset (the original's `ToTensor()` + `Normalize` on CIFAR images), directions as numpy
  arrays combined per point and converted with `torch.Tensor(d)` (its `set_weights`), the
  whole loss and accuracy arrays written to an HDF5 file and a progress line printed per point
  (to a string buffer here). Still favourable: `num_workers=0`;
* the floor: a bare loop of 441 forward passes + loss over the same cached batch, at w;
* the floor with accuracy: the same plus the argmax accuracy, i.e. the outputs a surface point
  has (loss and accuracy); ratios to both floors are printed;
* for reference, the same bare forward passes at the 441 grid points (441 prepared copies of the
  model): far from w the logits grow and the loss kernels get slower on CPU, so this is the
  cost of the forward passes a surface really makes; and the same with the accuracy (the argmax
  over few classes is slower where predictions are less peaked).

Each method is timed best-of-`--repeats`, with the methods interleaved in every repeat (the
machine is noisy). Prints grid points per second and ratios to the floor. Run:
`python scripts/bench_surface.py [--repeats 5] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from landscape import Probe, loss_surface, random_direction
from landscape.data import digits_cnn, digits_mlp, digits_tensors

STEPS = 21
N_SAMPLES = 1024


def floor(model, x, y, n_points):
    model.eval()
    with torch.inference_mode():
        for _ in range(n_points):
            float(nn.functional.cross_entropy(model(x), y))


def floor_with_accuracy(model, x, y, n_points):
    model.eval()
    with torch.inference_mode():
        for _ in range(n_points):
            out = model(x)
            float(nn.functional.cross_entropy(out, y))
            int((out.argmax(1) == y).sum())


def ours(model, x, y, xs, batched=False):
    probe = Probe(model, (x, y), batch_size=N_SAMPLES)
    d1, d2 = random_direction(probe, seed=0), random_direction(probe, seed=1)
    return loss_surface(probe, d1, d2, xs, xs, batched=batched)


def ours_loader(model, x, y, xs):
    """A fresh probe over the user's DataLoader of batch 256: evaluation re-batches the cache."""
    loader = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=False)
    probe = Probe(model, loader)
    d1, d2 = random_direction(probe, seed=0), random_direction(probe, seed=1)
    return loss_surface(probe, d1, d2, xs, xs)


def directions(model, x, y):
    """The filter-normalized directions of `ours`, per parameter (for the other loops)."""
    probe = Probe(model, (x, y), batch_size=N_SAMPLES)
    return [probe.unflatten(random_direction(probe, seed=s).vector) for s in (0, 1)]


def grid_models(model, xs, dirs):
    """441 copies of the model at the grid points w + a d1 + b d2."""
    out = []
    for a in xs:
        for b in xs:
            net = copy.deepcopy(model).eval()
            with torch.no_grad():
                for n, p in net.named_parameters():
                    p.add_(dirs[0][n], alpha=a).add_(dirs[1][n], alpha=b)
            out.append(net)
    return out


def floor_at_points(models, x, y):
    with torch.inference_mode():
        for net in models:
            float(nn.functional.cross_entropy(net(x), y))


def floor_at_points_with_accuracy(models, x, y):
    with torch.inference_mode():
        for net in models:
            out = net(x)
            float(nn.functional.cross_entropy(out, y))
            int((out.argmax(1) == y).sum())


def loss_landscapes_plane(model, x, y):
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    model.eval()
    metric = Loss(nn.functional.cross_entropy, x, y)
    try:
        return loss_landscapes.random_plane(model, metric, distance=1, steps=STEPS,
                                            normalization="filter", deepcopy_model=True)
    except ZeroDivisionError:  # its filter normalization divides by zero on the CNN (BatchNorm)
        return loss_landscapes.random_plane(model, metric, distance=1, steps=STEPS,
                                            normalization="layer", deepcopy_model=True)


def dataloader_loop(model, x, y, xs, dirs):
    """As tomgoldstein/loss-landscape: per point set weights, then loop over a DataLoader."""
    net = copy.deepcopy(model).eval()
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=False)
    w = [p.detach().clone() for p in net.parameters()]
    d1 = [dirs[0][n] for n, _ in net.named_parameters()]
    d2 = [dirs[1][n] for n, _ in net.named_parameters()]
    out = np.zeros((len(xs), len(xs)))
    for i, a in enumerate(xs):
        for j, b in enumerate(xs):
            for p, w0, u, v in zip(net.parameters(), w, d1, d2):
                p.data = w0 + a * u + b * v
            total, correct, n = 0.0, 0, 0
            with torch.no_grad():
                for xb, yb in loader:
                    o = net(xb)
                    total += nn.functional.cross_entropy(o, yb).item() * len(yb)
                    correct += (o.argmax(1) == yb).sum().item()
                    n += len(yb)
            out[i, j] = total / n
    return out


class RawDigits(Dataset):
    """The first n training digits as uint8 pixel images, decoded and normalized per sample."""

    def __init__(self, n: int, image: bool):
        pixels, labels = digits_tensors("train", standardize=False, dtype=torch.float64)
        # the training split's per-pixel statistics, as digits_tensors standardizes with
        self.mean = pixels.mean(0).float().reshape(1, 8, 8)
        self.std = pixels.std(0).clamp_min(1e-3).float().reshape(1, 8, 8)
        self.images = pixels[:n].numpy().astype(np.uint8).reshape(-1, 8, 8, 1)  # HWC
        self.labels = labels[:n].numpy()
        self.image = image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        t = torch.from_numpy(self.images[i]).permute(2, 0, 1).float()  # ToTensor-like
        t = (t - self.mean) / self.std  # Normalize-like
        return (t if self.image else t.reshape(-1)), int(self.labels[i])


def as_shipped_loop(model, dataset, xs, dirs, h5_path):
    """tomgoldstein/loss-landscape's crunch + set_weights + eval_loss, without MPI or workers."""
    import h5py

    net = copy.deepcopy(model).eval()
    loader = DataLoader(dataset, batch_size=128, shuffle=False, num_workers=0)
    w = [p.data for p in net.parameters()]
    names = [n for n, _ in net.named_parameters()]
    dx = [dirs[0][n].numpy() for n in names]  # its load_directions returns numpy arrays
    dy = [dirs[1][n].numpy() for n in names]
    shape = (len(xs), len(xs))
    losses, accs = -np.ones(shape), -np.ones(shape)
    sink = io.StringIO()
    with h5py.File(h5_path, "w") as f:
        f["train_loss"], f["train_acc"] = losses, accs
        coords = [(a, b) for a in xs for b in xs]
        for ind, (a, b) in enumerate(coords):
            changes = [d0 * a + d1 * b for d0, d1 in zip(dx, dy)]
            for p, w0, d in zip(net.parameters(), w, changes):
                p.data = w0 + torch.Tensor(d).type(type(w0))
            correct, total_loss, total = 0, 0.0, 0
            with torch.no_grad():
                for inputs, targets in loader:
                    total += inputs.size(0)
                    outputs = net(inputs)
                    total_loss += nn.functional.cross_entropy(outputs, targets).item() * len(
                        targets)
                    _, predicted = outputs.max(1)
                    correct += predicted.eq(targets).sum()
            losses.ravel()[ind] = total_loss / total
            accs.ravel()[ind] = 100.0 * float(correct) / total
            f["train_loss"][:], f["train_acc"][:] = losses, accs
            print(f"Evaluating {ind}/{len(coords)} coord={(a, b)} loss={losses.ravel()[ind]:.3f}",
                  file=sink)
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    xs = np.linspace(-1, 1, STEPS)
    n_points = STEPS * STEPS
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench_surface_")
    for name, build, image in (("MLP", digits_mlp, False), ("CNN", digits_cnn, True)):
        x, y = digits_tensors("train", image=image)
        x, y = x[:N_SAMPLES], y[:N_SAMPLES]
        model = build()
        dirs = directions(model, x, y)
        h5_path = os.path.join(tmp, f"{name}.h5")
        grid = grid_models(model, xs, dirs)
        methods = {
            "bare forward floor (at w)": (floor, (model, x, y, n_points)),
            "bare forward + accuracy (at w)": (floor_with_accuracy, (model, x, y, n_points)),
            "bare forward at the grid points": (floor_at_points, (grid, x, y)),
            "bare forward + accuracy at the grid points": (floor_at_points_with_accuracy,
                                                           (grid, x, y)),
            "landscape (loop)": (ours, (model, x, y, xs)),
            "landscape (vmap, batched=True)": (ours, (model, x, y, xs, True)),
            "landscape (loop, batch-256 DataLoader)": (ours_loader, (model, x, y, xs)),
            "loss-landscapes random_plane": (loss_landscapes_plane, (model, x, y)),
            "DataLoader loop (loss-landscape)": (dataloader_loop, (model, x, y, xs, dirs)),
            "loss-landscape loop as shipped": (as_shipped_loop, (
                model, RawDigits(N_SAMPLES, image), xs, dirs, h5_path)),
        }
        best = {k: float("inf") for k in methods}
        for _ in range(args.repeats):
            for k, (fn, fn_args) in methods.items():
                t0 = time.perf_counter()
                fn(*fn_args)
                best[k] = min(best[k], time.perf_counter() - t0)
        for k, t in best.items():
            rows.append((name, k, t, n_points / t, best["loss-landscapes random_plane"] / t,
                         t / best["bare forward floor (at w)"],
                         t / best["bare forward + accuracy (at w)"],
                         best["DataLoader loop (loss-landscape)"] / t,
                         best["loss-landscape loop as shipped"] / t))
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"21x21 grid, {N_SAMPLES} digits samples, {args.threads} thread(s), "
          f"best of {args.repeats} interleaved repeats; load average {load}\n")
    print("| model | method | seconds | points/s | speed vs loss-landscapes | time / floor "
          "| time / floor with accuracy | speed-up vs DataLoader loop | vs loop as shipped |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, k, t, pps, vs_ll, ratio, ratio_acc, speedup, speedup_shipped in rows:
        print(f"| {name} | {k} | {t:.3f} | {pps:.0f} | {vs_ll:.2f}x | {ratio:.2f} "
              f"| {ratio_acc:.2f} | {speedup:.1f}x | {speedup_shipped:.1f}x |")


if __name__ == "__main__":
    main()
