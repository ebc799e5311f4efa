"""Regenerate figures/: filter-normalized 1D and 2D loss plots of the digits ResNet, with and
without skip connections (Li et al. 2018, figure 5, in miniature). About two minutes on a
busy 2-core CPU (the surfaces are evaluated on the first 256 training samples).

Run: `python scripts/make_figures.py [--out figures] [--epochs 15] [--points 31]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from landscape import Probe, loss_line, loss_surface, random_direction  # noqa: E402
from landscape import plot as lp  # noqa: E402
from landscape.data import digits_loaders, digits_resnet, digits_tensors  # noqa: E402
from landscape.data.training import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="figures")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--points", type=int, default=21, help="grid points per axis in 2D")
    ap.add_argument("--samples", type=int, default=256, help="training samples evaluated")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loader, _ = digits_loaders(batch_size=64, image=True, seed=0)
    x, y = digits_tensors("train", image=True)
    data = (x[:args.samples], y[:args.samples])
    lines, surfaces, names = [], [], []
    for skip in (True, False):
        model = train(digits_resnet(skip=skip, seed=0), loader, epochs=args.epochs, lr=0.05,
                      seed=0)
        probe = Probe(model, data)
        d1, d2 = random_direction(probe, seed=0), random_direction(probe, seed=1)
        lines.append(loss_line(probe, d1, np.linspace(-1, 1, 51)))
        grid = np.linspace(-1, 1, args.points)
        surfaces.append(loss_surface(probe, d1, d2, grid, grid))
        names.append("with skip connections" if skip else "without skip connections")

    fig, ax = plt.subplots(figsize=(3.4, 2.6))
    lp.plot_line(lines, ax, labels=names, log=True)
    ax.set_title("digits ResNet, filter-normalized direction")
    fig.savefig(out / "resnet_line.png", dpi=150, bbox_inches="tight")
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.0))
    for ax, s, name in zip(axes, surfaces, names):
        lp.plot_contour(s, ax, levels=np.linspace(-1, 1.5, 26), log=True)
        ax.set_title(name)
    fig.savefig(out / "resnet_contour.png", dpi=150, bbox_inches="tight")
    fig = plt.figure(figsize=(6.8, 3.2))
    for k, (s, name) in enumerate(zip(surfaces, names)):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        lp.plot_surface_3d(s, ax, log=True, zmax=1.5)
        ax.set_title(name)
    fig.savefig(out / "resnet_surface3d.png", dpi=150, bbox_inches="tight")
    plt.close("all")
    for s, name in zip(surfaces, ("skip", "noskip")):
        print(f"{name}: loss at w {s.loss[len(s.xs) // 2, len(s.ys) // 2]:.4f}, "
              f"max {np.nanmax(s.loss):.3g}, {s.cost.seconds:.1f} s for {s.loss.size} points")


if __name__ == "__main__":
    main()
