"""Regenerate figures/resnet_*: filter-normalized 1D and 2D loss plots of the digits ResNet, with
and without skip connections (Li et al. 2018, figure 5, in miniature), in the paper style of
`landscape.plot` (single-column line plot, double-column contour and 3D panels).

Training, the same for both networks (`digits_resnet`, 8 channels, 3 blocks, BatchNorm; seed 0
for the initialization and the shuffling): SGD with momentum 0.9 and weight decay 5e-4, batch
64, learning rate 0.05 annealed to 0 by a cosine schedule over 60 epochs, on the 1438 training
images. Converged means, checked after training (the script stops otherwise): 100% training
accuracy and a plateau of the training loss (whole training set, eval mode), which changes by
less than 5% over the last 10 epochs. Printed per network: the training loss and accuracy, the
test accuracy and the loss change over the last 10 epochs.

Surfaces: the loss and accuracy on all 1438 training images along two filter-normalized random
directions (seeds 0 and 1, biases and BatchNorm parameters left out), at 51 x 51 points of
[-1, 1]^2 (the line: 101 points). Measured on the shared 2-core container (CPU, torch 2.13.0,
one thread): 7 minutes of wall time, 2.6 minutes of CPU time; each surface 170-190 s of wall
time (0.07 s per point), the training about 1.5 minutes for both. `--cache DIR` keeps the
computed points, so an interrupted or repeated run trains, then only draws.

Run: `python scripts/make_figures.py [--out figures] [--points 51] [--cache DIR]`.
Each figure is written as a 300 dpi PNG (`draw_figures(..., formats=("png", "pdf"))` adds PDFs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.layout_engine import PlaceHolderLayoutEngine  # noqa: E402
from torch import nn  # noqa: E402

from landscape import Probe, loss_line, loss_surface, random_direction  # noqa: E402
from landscape import plot as lp  # noqa: E402
from landscape.data import digits_loaders, digits_resnet, digits_tensors  # noqa: E402
from landscape.data.training import train  # noqa: E402
from landscape.warnings_words import warnings_in_words  # noqa: E402

NAMES = ("with skip connections", "without skip connections")
EPOCHS = 60


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
    lp.set_title(ax.figure, "digits ResNet, filter-normalized direction")
    written += lp.save_figure(ax.figure, out / "resnet_line", formats)

    logs = np.concatenate([np.log10(s.loss[np.isfinite(s.loss) & (s.loss > 0)])
                           for s in surfaces])
    # one scale for both panels: log-spaced levels above the lower of the two minima
    losses = np.concatenate([s.loss[np.isfinite(s.loss)] for s in surfaces])
    floor = float(losses.min())
    # from 0.01 above the minimum (a few times a converged loss) to the highest rise: the
    # basin is resolved down to its floor, not painted one colour below 1e-3 of the rim
    levels = floor + np.geomspace(0.01, float(losses.max()) - floor, 13)
    fig, axes = lp.subplots(1, len(surfaces), column="double", aspect=0.42, layout="compressed")
    for ax, s, name in zip(np.atleast_1d(axes), surfaces, names):
        lp.plot_contour(s, ax, levels=levels, floor=floor)
        with plt.rc_context(lp.STYLE):
            ax.set_title(name)
    written += lp.save_figure(fig, out / "resnet_contour", formats)

    bottom, top = float(logs.min()), float(logs.max()) if zmax is None else zmax
    # mplot3d draws its box in a square inside the Axes, centred, with wide empty margins: the
    # Axes are placed by hand (no layout engine), each a little wider than its half of the
    # canvas and shifted left, so the boxes fill the canvas and every label stays inside it
    # (tests/test_figures.py checks both).
    with plt.rc_context(lp.STYLE):
        fig = plt.figure(figsize=lp.figure_size("double", 0.4))
    # a layout engine that does nothing: "none" would let the style's constrained layout
    # back in when the PDF is saved
    fig.set_layout_engine(PlaceHolderLayoutEngine(adjust_compatible=True,
                                                  colorbar_gridspec=False))
    for k, (s, name) in enumerate(zip(surfaces, names)):
        ax = fig.add_axes((k / len(surfaces) - 0.03, 0.09, 0.98 / len(surfaces), 0.92),
                          projection="3d")
        lp.plot_surface_3d(s, ax, log=True, zmax=zmax)
        for note in ax.texts:  # the clip note, from the Axes' top to just under the title
            note.set_y(0.93)
        ax.set_zlim(bottom, top)
        ax.set_box_aspect(None, zoom=1.0)
        with plt.rc_context(lp.STYLE):
            fig.text((k + 0.5) / len(surfaces), 0.995, name, ha="center", va="top",
                     fontsize=lp.STYLE["axes.titlesize"])
    written += lp.save_figure(fig, out / "resnet_surface3d", formats)
    plt.close("all")
    return written


def train_converged(skip: bool, epochs: int = EPOCHS) -> tuple[nn.Module, dict[str, float]]:
    """The digits ResNet trained as the module docstring states; raises SystemExit when it
    misses the convergence criterion. Returns the model and its training statistics."""
    x, y = digits_tensors("train", image=True)
    xt, yt = digits_tensors("test", image=True)
    history: list[float] = []

    def record(_epoch: int, model: nn.Module) -> None:
        with torch.no_grad():
            history.append(float(nn.functional.cross_entropy(model(x), y)))

    loader, _ = digits_loaders(batch_size=64, image=True, seed=0)
    model = train(digits_resnet(skip=skip, seed=0), loader, epochs=epochs, lr=0.05,
                  momentum=0.9, weight_decay=5e-4, schedule="cosine", seed=0, on_epoch=record)
    with torch.no_grad():
        stats = {"train loss": history[-1],
                 "train accuracy": float((model(x).argmax(1) == y).float().mean()),
                 "test accuracy": float((model(xt).argmax(1) == yt).float().mean()),
                 "loss change, last 10 epochs": abs(history[-1] - history[-11]) / history[-11]}
    if stats["train accuracy"] < 1.0 or stats["loss change, last 10 epochs"] > 0.05:
        raise SystemExit(f"skip={skip}: not converged after {epochs} epochs: {stats}")
    return model, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="figures")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--points", type=int, default=51, help="grid points per axis in 2D")
    ap.add_argument("--cache", default=None,
                    help="folder for the computed points (a rerun resumes from them)")
    ap.add_argument("--zmax", type=float, default=None,
                    help="clip the 3D surfaces at this log10 loss (stated on the figure)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = None if args.cache is None else Path(args.cache)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    data = digits_tensors("train", image=True)
    lines, surfaces = [], []
    for skip, name in ((True, "skip"), (False, "noskip")):
        model, stats = train_converged(skip, args.epochs)
        print(name, ", ".join(f"{k} {v:.4g}" for k, v in stats.items()), flush=True)
        probe = Probe(model, data)
        d1, d2 = random_direction(probe, seed=0), random_direction(probe, seed=1)
        grid = np.linspace(-1, 1, args.points)
        lines.append(loss_line(probe, d1, np.linspace(-1, 1, 101),
                               out=None if cache is None else cache / f"{name}_line.npz"))
        surfaces.append(loss_surface(probe, d1, d2, grid, grid, progress=True,
                                     out=None if cache is None else cache / f"{name}.npz"))
    draw_figures(lines, surfaces, out, zmax=args.zmax)
    for s, name in zip(surfaces, ("skip", "noskip")):
        print(f"{name}: loss at w {s.loss[len(s.xs) // 2, len(s.ys) // 2]:.4g}, "
              f"max {np.nanmax(s.loss):.3g}, {s.cost.seconds:.1f} s for {s.loss.size} points")


if __name__ == "__main__":
    # warnings reported once each, in words, at the end (as the command line does)
    with warnings_in_words(lambda line: print(line, file=sys.stderr, flush=True)):
        main()
