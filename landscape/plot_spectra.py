"""Hessian eigenvalue densities: one density (`plot_density`), and one page of block spectra,
the density of each parameter block with the Jensen-Shannon distances between them
(`block_spectra_figure`). Both are exported by `landscape.plot`."""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .errors import LandscapeError
from .plot_style import OKABE_ITO, STYLE, fonts, new_axes, subplots


def plot_density(result: Any, ax: Any = None, log: bool = False, *,
                 column: str | float = "single") -> Any:
    """A Hessian eigenvalue density (stochastic Lanczos quadrature): `result.grid` vs
    `result.density`.

    The axes fit the data: x spans the grid, y runs from 0 (or, with `log=True`, six decades
    below the peak) to just above the peak.

    Args:
        result: any object with numpy fields `grid` (eigenvalue axis) and `density` (same length).
        ax: Axes to draw on (a new figure when None).
        log: logarithmic density axis (densities span many decades).
        column: width of a new figure: "single", "double" or inches.
    """
    grid = np.asarray(getattr(result, "grid", None), dtype=float)
    density = np.asarray(getattr(result, "density", None), dtype=float)
    if grid.ndim != 1 or grid.shape != density.shape:
        raise LandscapeError(
            "plot_density needs a result with 1D arrays `grid` and `density` of equal length."
        )
    peak = float(np.nanmax(density)) if np.isfinite(density).any() else 1.0
    with plt.rc_context(STYLE):
        ax = new_axes(ax, column)
        ax.plot(grid, density, color=OKABE_ITO[0])
        ax.set_xlim(grid.min(), grid.max())
        if log and peak > 0:
            ax.set_yscale("log")
            ax.set_ylim(peak * 1e-6, peak * 2.0)
        elif peak > 0:
            ax.set_ylim(0.0, peak * 1.05)
        ax.set_xlabel(r"eigenvalue $\lambda$")
        ax.set_ylabel("density")
    fonts(ax)
    return ax


def block_spectra_figure(results: Any, *, log: bool = True, column: str | float = "double",
                         sigma: float | None = None, ncols: int | None = None) -> Any:
    """The spectral density of every block of `hessian_density(..., by=...)` on one page, and a
    heatmap of their pairwise Jensen-Shannon distances (common width `sigma`, stated in its
    title; see `LayerResults.js_distances`).

    Args:
        results: a `LayerResults` of `DensityResult`s (two or more blocks for the distances).
        log: logarithmic density axes (spectra span many decades).
        column: figure width: "single", "double" or inches.
        sigma: the common broadening width of the distances (None: 1% of the nodes' span).
        ncols: panels per row (None: up to 3).

    Returns:
        The matplotlib Figure (save it with `save_figure`).

    Raises:
        LandscapeError: `results` holds no densities.
    """
    items = list(getattr(results, "items", lambda: [])())
    if not items or not all(hasattr(r, "density") for _, r in items):
        raise LandscapeError(
            "block_spectra_figure needs hessian_density(..., by=...) results (a LayerResults of "
            "DensityResults)."
        )
    with_heatmap = len(items) >= 2
    panels = len(items) + int(with_heatmap)
    ncols = ncols or (panels if panels <= 3 else 2 if panels == 4 else 3)
    nrows = math.ceil(panels / ncols)
    fig, axes = subplots(nrows, ncols, column=column, aspect=0.75 * nrows / ncols + 0.05,
                         squeeze=False)
    flat = list(axes.ravel())
    sizes = getattr(results, "sizes", {})
    for ax, (name, r) in zip(flat, items):
        plot_density(r, ax=ax, log=log)
        n = sizes.get(name)
        with plt.rc_context(STYLE):
            ax.set_title(f"{name}" + (f" ({n:,} params)" if n else ""),
                         fontsize=STYLE["axes.titlesize"])
    if with_heatmap:
        _distance_panel(fig, flat[len(items)], results.js_distances(sigma=sigma))
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig


def _distance_panel(fig: Any, ax: Any, dist: Any) -> None:
    k = len(dist.names)
    with plt.rc_context(STYLE):
        image = ax.imshow(dist.distances, vmin=0.0, vmax=1.0, cmap=STYLE["image.cmap"])
        ax.set_xticks(np.arange(k), dist.names, rotation=45, ha="right")
        ax.set_yticks(np.arange(k), dist.names)
        for i in range(k):
            for j in range(k):
                value = dist.distances[i, j]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if value < 0.5 else "black")
        ax.set_title(f"JS distance ($\\sigma$ = {dist.sigma:.2g})",
                     fontsize=STYLE["axes.titlesize"])
        fig.colorbar(image, ax=ax, label="JS distance (base 2)")

