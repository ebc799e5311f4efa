"""Figures from loss lines, surfaces, trajectories and Hessian densities (matplotlib).

Compute once, draw separately: every function takes a result and an optional `ax`, draws on it
(a new figure when `ax` is None), returns the Axes and never calls `show()` or saves; save with
`ax.figure.savefig("fig.pdf")` (vector) or `.png`. The library never picks a backend (scripts and
the CLI select Agg). All functions share one paper style (`STYLE`, applied with `plt.rc_context`):
serif text at 9 pt, thin lines, no top and right spines, a perceptually uniform colormap.

Conventions: `surface.loss[i, j]` is at `(xs[i], ys[j])`, so x runs along the first index.
NaN points (diverged losses) are left blank. `log=True` draws log10 of the loss (levels
log-spaced), which shows the shape of a basin far better when the loss grows fast.
`export_vtp` writes a surface for ParaView (VTK XML PolyData), as the loss-landscape code offers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .errors import LandscapeError
from .surface import Line, Surface, TrajectoryPCA

STYLE: dict[str, Any] = {
    "font.family": "serif",
    "font.size": 9,
    "axes.labelsize": 9,
    "axes.titlesize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "lines.linewidth": 1.2,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "figure.figsize": (3.4, 2.6),
    "image.cmap": "viridis",
}
CMAP = "viridis"


def plot_line(lines: Line | Sequence[Line], ax: Any = None, *, labels: Sequence[str] | None = None,
              accuracy: bool = True, log: bool = False, stderr: bool = True) -> Any:
    """Loss along one or several lines, overlaid; accuracy on a second y axis (dashed).

    Args:
        lines: a `Line` or a sequence of them (compared on one axes).
        ax: Axes to draw on (a new figure when None).
        labels: one legend label per line.
        accuracy: also draw accuracy (right axis) when the lines have it.
        log: logarithmic loss axis.
        stderr: shade +- 1 standard error for lines evaluated with `max_samples=`.
    """
    lines = [lines] if isinstance(lines, Line) else list(lines)
    if not lines:
        raise LandscapeError("plot_line needs at least one Line.")
    if labels is not None and len(labels) != len(lines):
        raise LandscapeError(f"labels has {len(labels)} entries for {len(lines)} lines.")
    with plt.rc_context(STYLE):
        ax = _axes(ax)
        acc_ax = None
        for k, line in enumerate(lines):
            color = f"C{k}"
            label = labels[k] if labels is not None else None
            ax.plot(line.alphas, line.loss, color=color, label=label)
            if stderr and line.loss_stderr is not None:
                ax.fill_between(line.alphas, line.loss - line.loss_stderr,
                                line.loss + line.loss_stderr, color=color, alpha=0.25, lw=0)
            if accuracy and line.accuracy is not None:
                if acc_ax is None:
                    acc_ax = ax.twinx()
                    acc_ax.spines["right"].set_visible(True)
                    acc_ax.set_ylabel("accuracy (dashed)")
                    acc_ax.set_ylim(0, 1.02)
                acc_ax.plot(line.alphas, line.accuracy, color=color, ls="--", lw=0.9)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(r"$\alpha$")
        ax.set_ylabel("loss")
        if labels is not None:
            ax.legend(frameon=False)
    return ax


def plot_contour(surface: Surface, ax: Any = None, *, levels: int | Sequence[float] = 20,
                 log: bool = False, filled: bool = False, label_levels: bool = True) -> Any:
    """Contour lines of the loss with labelled levels (filled contours with `filled=True`).

    Args:
        surface: the `Surface`; x along d1, y along d2.
        ax: Axes to draw on (a new figure when None).
        levels: number of levels or their values (in log10 units when `log=True`).
        log: contour log10(loss), so the levels are log-spaced in the loss.
        filled: filled contours with a colorbar instead of labelled lines.
        label_levels: write the level values on the lines (ignored when filled).
    """
    z = _z(surface, log)
    with plt.rc_context(STYLE):
        ax = _axes(ax)
        x, y = np.meshgrid(surface.xs, surface.ys, indexing="ij")
        if filled:
            cs = ax.contourf(x, y, z, levels=levels, cmap=CMAP)
            ax.figure.colorbar(cs, ax=ax, label=_zlabel(log))
        else:
            cs = ax.contour(x, y, z, levels=levels, cmap=CMAP, linewidths=0.8)
            if label_levels:
                ax.clabel(cs, inline=True, fontsize=6, fmt="%.3g")
        ax.plot([0], [0], marker="*", color="k", ms=6, ls="none")
        _xy_labels(ax, surface)
        ax.set_aspect("equal", adjustable="box")
    return ax


def plot_heatmap(surface: Surface, ax: Any = None, *, log: bool = False,
                 field: str = "loss") -> Any:
    """The loss (or `field="accuracy"`) as a colour map, with a colorbar; NaN cells blank."""
    if field not in ("loss", "accuracy"):
        raise LandscapeError(f"field must be 'loss' or 'accuracy'; got {field!r}.")
    if field == "accuracy":
        if surface.accuracy is None:
            raise LandscapeError("this surface has no accuracy (not a classification task).")
        z, label = surface.accuracy, "accuracy"
    else:
        z, label = _z(surface, log), _zlabel(log)
    with plt.rc_context(STYLE):
        ax = _axes(ax)
        mesh = ax.pcolormesh(surface.xs, surface.ys, np.ma.masked_invalid(z).T, cmap=CMAP,
                             shading="nearest")
        ax.figure.colorbar(mesh, ax=ax, label=label)
        _xy_labels(ax, surface)
        ax.set_aspect("equal", adjustable="box")
    return ax


def plot_surface_3d(surface: Surface, ax: Any = None, *, log: bool = False,
                    zmax: float | None = None) -> Any:
    """A 3D surface of the loss (on `fig.add_subplot(projection="3d")`).

    Args:
        surface: the `Surface`.
        ax: a 3D Axes (a new figure with one when None).
        log: draw log10(loss).
        zmax: clip the height at this value (in the drawn units) so a diverging rim does not
            flatten the basin; NaN points stay blank.
    """
    z = _z(surface, log)
    if zmax is not None:
        z = np.where(z > zmax, zmax, z)
    with plt.rc_context(STYLE):
        if ax is None:
            fig = plt.figure(figsize=(3.6, 3.0))
            ax = fig.add_subplot(projection="3d")
        elif getattr(ax, "name", "") != "3d":
            raise LandscapeError(
                "plot_surface_3d needs a 3D Axes: fig.add_subplot(projection='3d')."
            )
        x, y = np.meshgrid(surface.xs, surface.ys, indexing="ij")
        ax.plot_surface(x, y, np.ma.masked_invalid(z), cmap=CMAP, linewidth=0,
                        antialiased=True, rstride=1, cstride=1)
        _xy_labels(ax, surface)
        ax.set_zlabel(_zlabel(log))
    return ax


def plot_trajectory(surface: Surface, path: TrajectoryPCA | np.ndarray, ax: Any = None, *,
                    levels: int | Sequence[float] = 20, log: bool = False) -> Any:
    """An optimization path over the contour of the PCA plane (Li et al. 2018, figure 9).

    Args:
        surface: the loss on the plane of the path's two directions, around the last checkpoint.
        path: a `TrajectoryPCA` (axes labelled with the explained variance) or (T, 2) coordinates.
        ax, levels, log: as in `plot_contour`.
    """
    coords = path.coords if isinstance(path, TrajectoryPCA) else np.asarray(path, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise LandscapeError(f"path coordinates must have shape (T, 2); got {coords.shape}.")
    with plt.rc_context(STYLE):
        ax = plot_contour(surface, ax, levels=levels, log=log)
        ax.plot(coords[:, 0], coords[:, 1], "-o", color="C3", ms=2.5, lw=1.0)
        if isinstance(path, TrajectoryPCA):
            ev = path.explained_variance
            ax.set_xlabel(f"PC 1 ({100 * ev[0]:.1f}%)")
            ax.set_ylabel(f"PC 2 ({100 * ev[1]:.1f}%)")
    return ax


def plot_density(result: Any, ax: Any = None, log: bool = False) -> Any:
    """A Hessian eigenvalue density (stochastic Lanczos quadrature): `result.grid` vs
    `result.density`.

    Args:
        result: any object with numpy fields `grid` (eigenvalue axis) and `density` (same length).
        ax: Axes to draw on (a new figure when None).
        log: logarithmic density axis (densities span many decades).
    """
    grid = np.asarray(getattr(result, "grid", None), dtype=float)
    density = np.asarray(getattr(result, "density", None), dtype=float)
    if grid.ndim != 1 or grid.shape != density.shape:
        raise LandscapeError(
            "plot_density needs a result with 1D arrays `grid` and `density` of equal length."
        )
    with plt.rc_context(STYLE):
        ax = _axes(ax)
        ax.plot(grid, density, color="C0")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(np.nanmax(density) * 1e-8, np.finfo(float).tiny))
        ax.set_xlabel(r"eigenvalue $\lambda$")
        ax.set_ylabel("density")
    return ax


def plot_track(track: Any, ax: Any = None, *, measure: str | None = None,
               lr: float | None = None, log: bool = False) -> Any:
    """A measure of `landscape.track` against the training step.

    Args:
        track: a `Track` (rows with "step" and measure values; `<measure>_stderr` drawn as bars).
        measure: which column (default: the track's first measure).
        lr: learning rate; draws the edge of stability 2 / lr of gradient descent (Cohen et al.
            2021) as a dashed line, meaningful for the top eigenvalue.
        log: logarithmic y axis.
    """
    measure = measure or track.measures[0]
    if measure not in track.measures:
        raise LandscapeError(f"measure {measure!r} was not tracked; choose among "
                             f"{list(track.measures)}.")
    steps = np.array(track.steps, dtype=float)
    values = np.array([np.nan if v is None else v for v in track.column(measure)], dtype=float)
    with plt.rc_context(STYLE):
        ax = _axes(ax)
        err = track.column(f"{measure}_stderr")
        if any(e is not None for e in err):
            ax.errorbar(steps, values, yerr=[0 if e is None else e for e in err], marker="o",
                        ms=3, capsize=2)
        else:
            ax.plot(steps, values, marker="o", ms=3)
        if lr is not None:
            if lr <= 0:
                raise LandscapeError(f"lr must be positive; got {lr}.")
            ax.axhline(2.0 / lr, color="0.4", ls="--", lw=0.9, label=f"2 / lr = {2 / lr:.3g}")
            ax.legend(frameon=False)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(measure.replace("_", " "))
    return ax


def export_vtp(surface: Surface, path: str | os.PathLike, *, log: bool = False,
               zmax: float | None = None) -> None:
    """Write the surface as VTK XML PolyData (`.vtp`) for ParaView.

    Points are (xs[i], ys[j], z) with z the loss (log10 with `log=True`, clipped at `zmax`);
    NaN heights become the largest finite height (VTK has no holes in a mesh), and the point data
    array "loss" keeps the true values with NaN. Cells are the grid's quads.
    """
    z = _z(surface, log)
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise LandscapeError("the surface has no finite point to export.")
    top = float(finite.max()) if zmax is None else float(zmax)
    height = np.where(np.isfinite(z), np.minimum(z, top), top)
    nx, ny = z.shape
    x, y = np.meshgrid(surface.xs, surface.ys, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), height.ravel()], axis=1)
    idx = np.arange(nx * ny).reshape(nx, ny)
    quads = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], axis=-1)
    quads = quads.reshape(-1, 4)

    def fmt(a: np.ndarray) -> str:
        return " ".join(repr(float(v)) if np.isfinite(v) else "NaN" for v in a.ravel())

    conn = " ".join(str(int(v)) for v in quads.ravel())
    offsets = " ".join(str(4 * (k + 1)) for k in range(len(quads)))
    xml = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">\n<PolyData>\n'
        f'<Piece NumberOfPoints="{len(pts)}" NumberOfVerts="0" NumberOfLines="0" '
        f'NumberOfStrips="0" NumberOfPolys="{len(quads)}">\n'
        '<PointData Scalars="loss">\n'
        f'<DataArray type="Float64" Name="loss" format="ascii">{fmt(surface.loss)}</DataArray>\n'
        '</PointData>\n<Points>\n'
        f'<DataArray type="Float64" NumberOfComponents="3" format="ascii">{fmt(pts)}'
        '</DataArray>\n</Points>\n<Polys>\n'
        f'<DataArray type="Int64" Name="connectivity" format="ascii">{conn}</DataArray>\n'
        f'<DataArray type="Int64" Name="offsets" format="ascii">{offsets}</DataArray>\n'
        '</Polys>\n</Piece>\n</PolyData>\n</VTKFile>\n'
    )
    with open(path, "w", encoding="ascii") as f:
        f.write(xml)


# ---------------------------------------------------------------------- helpers


def _axes(ax: Any) -> Any:
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _z(surface: Surface, log: bool) -> np.ndarray:
    z = np.asarray(surface.loss, dtype=float)
    if not log:
        return z
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)


def _zlabel(log: bool) -> str:
    return r"$\log_{10}$ loss" if log else "loss"


def _xy_labels(ax: Any, surface: Surface) -> None:
    ax.set_xlabel(r"$\alpha$ ($d_1$)")
    ax.set_ylabel(r"$\beta$ ($d_2$)")
