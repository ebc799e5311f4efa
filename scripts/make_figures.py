"""Regenerate figures/: filter-normalized 1D and 2D loss plots of the digits ResNet, with and
without skip connections (Li et al. 2018, figure 5, in miniature), in the paper style of
`landscape.plot` (single-column line plot, double-column contour and 3D panels). About two
minutes on a 2-core CPU, seven when it is busy (the surfaces are evaluated on the first 256
training samples).

Run: `python scripts/make_figures.py [--out figures] [--epochs 6] [--points 21] [--zmax Z]`.
Each figure is written as a 300 dpi PNG (`draw_figures(..., formats=("png", "pdf"))` adds PDFs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from landscape import Probe, loss_line, loss_surface, random_direction  # noqa: E402
from landscape import plot as lp  # noqa: E402
from landscape.data import digits_loaders, digits_resnet, digits_tensors  # noqa: E402
from landscape.data.training import train  # noqa: E402

NAMES = ("with skip connections", "without skip connections")


def draw_figures(lines: Sequence, surfaces: Sequence, out: Path, names: Sequence[str] = NAMES,
                 zmax: float | None = None, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Draw resnet_line, resnet_contour and resnet_surface3d from computed lines and surfaces.

    Both contour panels share the same levels (log-spaced above the lower minimum), both 3D
    panels the same z range (log10 loss), so the two
    networks are compared on one scale. `zmax` (log10 loss) clips the 3D surfaces, stated on the
    figure; None draws every point.
    """
    written = []
    ax = lp.plot_line(lines, labels=list(names), log=True, column="single")
    with plt.rc_context(lp.STYLE):
        ax.figure.suptitle("digits ResNet, filter-normalized direction")
    written += lp.save_figure(ax.figure, out / "resnet_line", formats)

    logs = np.concatenate([np.log10(s.loss[np.isfinite(s.loss) & (s.loss > 0)])
                           for s in surfaces])
    # one scale for both panels: log-spaced levels above the lower of the two minima
    losses = np.concatenate([s.loss[np.isfinite(s.loss)] for s in surfaces])
    floor = float(losses.min())
    levels = floor + (float(losses.max()) - floor) * np.logspace(-3, 0, 12)
    fig, axes = lp.subplots(1, len(surfaces), column="double", aspect=0.42, layout="compressed")
    for ax, s, name in zip(np.atleast_1d(axes), surfaces, names):
        lp.plot_contour(s, ax, levels=levels, floor=floor)
        with plt.rc_context(lp.STYLE):
            ax.set_title(name)
    written += lp.save_figure(fig, out / "resnet_contour", formats)

    bottom, top = float(logs.min()), float(logs.max()) if zmax is None else zmax
    with plt.rc_context(lp.STYLE):
        fig = plt.figure(figsize=lp.figure_size("double", 0.4), layout="constrained")
    for k, (s, name) in enumerate(zip(surfaces, names)):
        ax = fig.add_subplot(1, len(surfaces), k + 1, projection="3d")
        lp.plot_surface_3d(s, ax, log=True, zmax=zmax)
        ax.set_zlim(bottom, top)
        with plt.rc_context(lp.STYLE):
            ax.set_title(name)
    written += lp.save_figure(fig, out / "resnet_surface3d", formats)
    plt.close("all")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="figures")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--points", type=int, default=21, help="grid points per axis in 2D")
    ap.add_argument("--samples", type=int, default=256, help="training samples evaluated")
    ap.add_argument("--zmax", type=float, default=None,
                    help="clip the 3D surfaces at this log10 loss (stated on the figure)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loader, _ = digits_loaders(batch_size=64, image=True, seed=0)
    x, y = digits_tensors("train", image=True)
    data = (x[:args.samples], y[:args.samples])
    lines, surfaces = [], []
    for skip in (True, False):
        model = train(digits_resnet(skip=skip, seed=0), loader, epochs=args.epochs, lr=0.05,
                      seed=0)
        probe = Probe(model, data)
        d1, d2 = random_direction(probe, seed=0), random_direction(probe, seed=1)
        lines.append(loss_line(probe, d1, np.linspace(-1, 1, 51)))
        grid = np.linspace(-1, 1, args.points)
        surfaces.append(loss_surface(probe, d1, d2, grid, grid))
    draw_figures(lines, surfaces, out, zmax=args.zmax)
    for s, name in zip(surfaces, ("skip", "noskip")):
        print(f"{name}: loss at w {s.loss[len(s.xs) // 2, len(s.ys) // 2]:.4f}, "
              f"max {np.nanmax(s.loss):.3g}, {s.cost.seconds:.1f} s for {s.loss.size} points")


if __name__ == "__main__":
    main()
