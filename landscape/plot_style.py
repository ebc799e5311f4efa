"""The paper style of every figure: colours, column widths, fonts (`STYLE`), figure sizes, new
axes in the style (`subplots`) and saving as PDF and 300 dpi PNG (`save_figure`). The drawing
functions are in `landscape.plot`, which exports these names too."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from cycler import cycler

from ._validate import OneOf
from .errors import LandscapeError

# Okabe and Ito (2008), "Color Universal Design": distinguishable under the common colour vision
# deficiencies and in greyscale by lightness; yellow last (faint on white).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
             "#F0E442")
CMAP = "viridis"
# Widths in inches. Single: ICML/NeurIPS-style 3.25 in columns (IEEE 3.5, ACM 3.33, Nature 3.5
# take it unscaled). Double: 6.75 in, the text width of two-column layouts.
COLUMN_WIDTHS: dict[str, float] = {"single": 3.25, "double": 6.75}
FIGURE_DPI = 300
SAVE_FORMATS = ("pdf", "png")

STYLE: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "mathtext.fontset": "dejavusans",
    "font.size": 8,
    "axes.labelsize": 8,
    "axes.titlesize": 8,
    "figure.titlesize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=OKABE_ITO),
    "legend.frameon": False,
    "image.cmap": CMAP,
    "figure.constrained_layout.use": True,
    # a little more than the default 3 pt margin: text extents shift by a pixel or two between
    # the screen dpi and the 300 dpi of the saved file
    "figure.constrained_layout.w_pad": 0.06,
    "figure.constrained_layout.h_pad": 0.06,
    "figure.figsize": (COLUMN_WIDTHS["single"], 0.75 * COLUMN_WIDTHS["single"]),
    "figure.dpi": 100,
    "savefig.dpi": FIGURE_DPI,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}


def figure_size(column: str | float = "single", aspect: float = 0.75) -> tuple[float, float]:
    """(width, height) in inches of a figure that fits a journal column.

    Args:
        column: "single" (3.25 in), "double" (6.75 in) or a width in inches.
        aspect: height / width.

    Raises:
        LandscapeError: an unknown column name or a non-positive width or aspect.

    Example:
        >>> figure_size("double", aspect=0.4)
        (6.75, 2.7)
    """
    if isinstance(column, str):
        OneOf(tuple(COLUMN_WIDTHS), "a width in inches")("column", column)
        width = COLUMN_WIDTHS[column]
    else:
        width = float(column)
        if not width > 0:
            raise LandscapeError(f"column width must be positive inches; got {column!r}.")
    if not aspect > 0:
        raise LandscapeError(f"aspect must be positive; got {aspect!r}.")
    return width, round(width * aspect, 4)


def subplots(nrows: int = 1, ncols: int = 1, *, column: str | float = "single",
             aspect: float | None = None, layout: str = "constrained",
             **kwargs: Any) -> tuple[Any, Any]:
    """`plt.subplots` in the paper style: column width, constrained layout, `STYLE` fonts.

    Args:
        nrows, ncols: the grid of panels.
        column: "single", "double" or a width in inches (see `figure_size`).
        aspect: height / width of the whole figure (default 0.75 for one row of single-column
            panels, less for wide rows).
        layout: "constrained", or "compressed" for panels of fixed aspect (contours, heatmaps:
            the colorbars then match the panels' height).
        **kwargs: passed to `plt.subplots` (sharex, subplot_kw, gridspec_kw, ...).

    Returns:
        (figure, axes) as `plt.subplots` returns them.
    """
    if aspect is None:
        aspect = 0.75 * nrows / ncols if column == "single" else 0.36 * nrows * max(1, 2 / ncols)
    with plt.rc_context(STYLE):
        return plt.subplots(nrows, ncols, figsize=figure_size(column, aspect), layout=layout,
                            **kwargs)


def save_figure(fig: Any, path: str | os.PathLike, formats: Sequence[str] = SAVE_FORMATS,
                dpi: int = FIGURE_DPI) -> list[Path]:
    """Save `fig` as vector PDF and a `dpi` PNG (or `formats`): `path` without its suffix.

    `save_figure(fig, "out/contour")` writes out/contour.pdf and out/contour.png. The figure keeps
    its size (no tight bounding box), so a single-column figure stays exactly column wide. Each
    file is written atomically: to a temporary file in the same folder, then renamed over the
    target, so an interruption never leaves a broken image (an older one stays as it was).

    Returns:
        The paths written, in the order of `formats`.
    """
    stem = Path(path)
    if stem.suffix.lstrip(".") in formats:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = stem.parent / f"{stem.name}.{fmt}"
        tmp = stem.parent / f".{stem.name}.{os.getpid()}.tmp.{fmt}"
        try:
            with plt.rc_context(STYLE):
                fig.savefig(tmp, dpi=dpi, format=fmt)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        written.append(target)
    return written


def fonts(*axes: Any) -> None:
    """Give the axes' labels, title and tick labels the style's family and sizes: Axes made
    outside `STYLE` (a user's own figure) keep matplotlib's sizes otherwise."""
    family = STYLE["font.sans-serif"][0]
    for a in axes:
        if a is None:
            continue
        for axis in [a.xaxis, a.yaxis] + ([a.zaxis] if hasattr(a, "zaxis") else []):
            axis.label.set_fontsize(STYLE["axes.labelsize"])
            axis.label.set_family(family)
        if not hasattr(a, "zaxis"):
            a.tick_params(labelsize=STYLE["xtick.labelsize"])
        a.title.set_fontsize(STYLE["axes.titlesize"])
        a.title.set_family(family)


def new_axes(ax: Any, column: str | float = "single", layout: str = "constrained") -> Any:
    """`ax`, or new Axes in the style when it is None."""
    if ax is None:
        _, ax = subplots(column=column, layout=layout)
    return ax
