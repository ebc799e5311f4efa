"""Figures from loss lines, surfaces, trajectories and Hessian densities (matplotlib).

Compute once, draw separately: every function takes a result and an optional `ax`, draws on it
(a new figure when `ax` is None), returns the Axes and never calls `show()`. Save with
`save_figure(fig, "name")` (vector PDF and a 300 dpi PNG) or `fig.savefig(...)`. The library never
picks a backend (scripts and the CLI select Agg).

Paper style: every figure made here is sized for a journal column, `column="single"` (3.25 in
wide: ICML, IEEE, ACM and Nature single columns take it at 100%) or `column="double"` (6.75 in:
the full text width of two-column layouts), or a width in inches. It uses constrained layout (no
label cut off at the canvas edge), one font family (DejaVu Sans, shipped with matplotlib, text and
math alike; 8 pt, about the caption size of most venues, fonts embedded as TrueType in PDFs),
the colorblind-safe Okabe-Ito colours for lines and the perceptually uniform viridis colormap.
Every contour and heatmap has a colorbar naming its quantity and scale ("loss" or
"log10 loss"). `STYLE` holds these settings; use it as `plt.rc_context(STYLE)` for figures of your
own.

Honest pictures: nothing is clipped unless asked for (`plot_surface_3d(..., zmax=)`), and a
clip is stated on the figure; density and track axes fit the data, and a 2 / lr line far above
the data is written as a note rather than squashing the curves.

Conventions: `surface.loss[i, j]` is at `(xs[i], ys[j])`, so x runs along the first index.
NaN points (diverged losses) are left blank. `log=True` draws log10 of the loss (levels
log-spaced), which shows the shape of a basin far better when the loss grows fast.
`export_vtp` writes a surface for ParaView (VTK XML PolyData), as the loss-landscape code offers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from .errors import LandscapeError
from .plot_export import export_vtp
from .plot_export import surface_values as _z
from .plot_spectra import block_spectra_figure, plot_density
from .plot_style import (
    CMAP,
    COLUMN_WIDTHS,
    FIGURE_DPI,
    OKABE_ITO,
    SAVE_FORMATS,
    STYLE,
    figure_size,
    save_figure,
    subplots,
)
from .plot_style import fonts as _fonts
from .plot_style import new_axes as _axes
from .surface import Line, Surface, TrajectoryPCA

__all__ = ["CMAP", "COLUMN_WIDTHS", "FIGURE_DPI", "OKABE_ITO", "SAVE_FORMATS", "STYLE",
           "block_spectra_figure", "export_vtp", "figure_size", "plot_contour", "plot_density",
           "plot_heatmap", "plot_line", "plot_surface_3d", "plot_track", "plot_trajectory",
           "save_figure", "set_title", "subplots", "track_figure"]


def set_title(target: Any, text: str) -> None:
    """The one title style of the package's figures: the figure's title (`suptitle`) in the
    style's 8 pt, not bold, for a figure or the figure of an Axes."""
    fig = getattr(target, "figure", target) if not hasattr(target, "suptitle") else target
    with plt.rc_context(STYLE):
        fig.suptitle(text, fontsize=STYLE["figure.titlesize"], fontweight="normal")


def _two_digits(value: float) -> str:
    """Two significant digits without an exponent below 1e5: 100, 30, 0.3 (not 1e+02)."""
    return f"{float(f'{value:.2g}'):g}"


def plot_line(lines: Line | Sequence[Line], ax: Any = None, *,
              labels: Sequence[str] | None = None, accuracy: bool = True, log: bool = False,
              stderr: bool = True, xlabel: str = r"$\alpha$",
              accuracy_range: tuple[float, float] | None = (0.0, 1.0),
              column: str | float = "single", styles: Sequence[dict] | None = None) -> Any:
    """Loss along one or several lines; accuracy in its own panel.

    With `ax=None` and accuracy to draw, the new figure has two panels sharing the alpha axis:
    loss above, accuracy below on a fixed [0, 1] axis (so rounding noise near 1.0 does not
    look like a barrier), and the legend below the panels, outside the data.

    Args:
        lines: a `Line` or a sequence of them (compared on one axes).
        ax: None (a new figure), an Axes (accuracy then goes on a dashed twin right axis) or a
            pair `(loss_ax, accuracy_ax)`.
        labels: one legend label per line.
        accuracy: also draw accuracy when the lines have it.
        log: logarithmic loss axis.
        stderr: shade +- 1 standard error for lines evaluated with `max_samples=`.
        xlabel: label of the alpha axis.
        accuracy_range: the accuracy axis' limits (default [0, 1]); None fits the curves, and
            the axis label then says "zoomed".
        column: width of a new figure: "single", "double" or inches.
        styles: per line, keyword arguments of matplotlib's `plot` (`color`, `linestyle`,
            `alpha`, `linewidth`) overriding the default, the k-th Okabe-Ito colour, solid (e.g.
            one colour per pair, dashed after alignment); the accuracy panel takes the colour
            and line style.

    Returns:
        The loss Axes (`ax.figure` holds the accuracy panel too).
    """
    lines = [lines] if isinstance(lines, Line) else list(lines)
    if not lines:
        raise LandscapeError("plot_line needs at least one Line.")
    if labels is not None and len(labels) != len(lines):
        raise LandscapeError(f"labels has {len(labels)} entries for {len(lines)} lines.")
    draw_acc = accuracy and any(line.accuracy is not None for line in lines)
    with plt.rc_context(STYLE):
        twin = False
        if ax is None:
            width = figure_size(column)[0]
            legend_in = 0.0
            if labels is not None:  # room for the legend rows under the panels
                legend_in = 0.15 * -(-len(labels) // _legend_columns(labels, width)) + 0.05
            panels_in = width * (0.9 if column == "single" else 0.45) if draw_acc \
                else width * (0.7 if column == "single" else 0.35)
            aspect = (panels_in + legend_in) / width
            if draw_acc:
                fig, (ax, acc_ax) = subplots(2, 1, column=column, sharex=True, aspect=aspect,
                                             gridspec_kw={"height_ratios": (3, 2)})
            else:
                fig, ax = subplots(column=column, aspect=aspect)
                acc_ax = None
        elif isinstance(ax, (tuple, list, np.ndarray)):
            if len(ax) != 2:
                raise LandscapeError("ax must be one Axes or a pair (loss_ax, accuracy_ax).")
            ax, acc_ax = ax
        else:
            acc_ax, twin = (ax.twinx(), True) if draw_acc else (None, False)
        for k, line in enumerate(lines):
            style = {"color": OKABE_ITO[k % len(OKABE_ITO)], "linestyle": "-",
                     **(styles[k] if styles is not None else {})}
            color = style["color"]
            label = labels[k] if labels is not None else None
            ax.plot(line.alphas, line.loss, label=label, **style)
            if stderr and line.loss_stderr is not None:
                ax.fill_between(line.alphas, line.loss - line.loss_stderr,
                                line.loss + line.loss_stderr, color=color, alpha=0.25, lw=0)
            if acc_ax is not None and line.accuracy is not None:
                acc_ax.plot(line.alphas, line.accuracy, color=color,
                            ls="--" if twin else style["linestyle"], lw=0.9 if twin else None)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("loss")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        if acc_ax is not None:
            zoom = "" if accuracy_range is not None else ", zoomed"
            if accuracy_range is not None:
                acc_ax.set_ylim(*accuracy_range)
            if twin:
                acc_ax.spines["right"].set_visible(True)
                acc_ax.set_ylabel(f"accuracy (dashed{zoom})")
                ax.set_xlabel(xlabel)
            else:
                acc_ax.set_ylabel(f"accuracy{' (zoomed)' if zoom else ''}")
                acc_ax.set_xlabel(xlabel)
                ax.tick_params(labelbottom=False)
        else:
            ax.set_xlabel(xlabel)
        if labels is not None:
            _legend_outside(ax, acc_ax if not twin else None)
    _fonts(ax, acc_ax)
    return ax


def _legend_columns(names: Sequence[str], width_in: float) -> int:
    """How many legend columns fit in `width_in` inches (about 0.055 in a character at 7 pt,
    plus the line sample and padding)."""
    longest = max(len(str(n)) for n in names)
    return int(max(1, min(len(names), width_in // (0.055 * longest + 0.55))))


def _legend_outside(ax: Any, below: Any = None) -> None:
    """A legend outside the data: under the figure's panels when we made the figure (constrained
    layout), else above `ax`."""
    handles, names = ax.get_legend_handles_labels()
    fig = ax.figure
    ncols = _legend_columns(names, fig.get_figwidth())
    if fig.get_layout_engine() is not None and below is not None:
        fig.legend(handles, names, loc="outside lower center", ncols=ncols)
    else:
        ax.legend(handles, names, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncols=ncols,
                  borderaxespad=0.0)


def plot_contour(surface: Surface, ax: Any = None, *, levels: int | Sequence[float] = 12,
                 log: bool = True, filled: bool = False, label_levels: bool = True,
                 floor: float | None = None, column: str | float = "single") -> Any:
    """Contour lines of the loss (filled contours with `filled=True`), with a colorbar.

    With `log=True` (default) the levels are log-spaced above the minimum: the contours are
    those of loss - m (m the lowest loss of the surface, or `floor`) at `levels` values spread
    evenly in log10 over the three decades below the largest rise, so the basin of a trained
    model (a loss near 0 inside, large on the rim) is resolved and not one colour. The colorbar
    (log scale) is labelled "loss - m" with m's value. With `log=False` the levels are evenly
    spaced in the loss. The colorbar names its quantity; when explicit `levels` do not cover the
    data, its ends are pointed (values beyond the last level exist).

    Args:
        surface: the `Surface`; x along d1, y along d2.
        ax: Axes to draw on (a new figure when None).
        levels: number of levels, or their values in loss units (with `log=True`, those at or
            below the minimum are dropped).
        log: log-spaced levels above the minimum (default) or evenly spaced ones.
        filled: filled contours instead of lines.
        label_levels: write the level values on every other line (ignored when filled).
        floor: the m that log levels are measured from (default: the surface's lowest loss);
            give the same one to panels that must share levels.
        column: width of a new figure: "single", "double" or inches.
    """
    z = np.asarray(surface.loss, dtype=float)
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise LandscapeError("the surface has no finite loss to draw.")
    norm, label, fmt, auto = None, "loss", "%.3g", isinstance(levels, int)
    if log:
        m = float(finite.min()) if floor is None else float(floor)
        with np.errstate(invalid="ignore"):
            z = np.where(z - m > 0, z - m, np.nan)  # the minimum itself has no log level
        rise = float(np.nanmax(z))
        if not rise > 0:
            raise LandscapeError("the surface is flat (every loss equal): nothing to contour; "
                                 "draw it with log=False.")
        if isinstance(levels, int):
            levels = list(rise * np.logspace(-3, 0, levels))
        else:
            levels = [v - m for v in levels if v - m > 0]
            if not levels:
                raise LandscapeError("no level lies above the minimum: give levels in loss "
                                     "units, above the lowest loss.")
        from matplotlib.colors import LogNorm

        norm = LogNorm(vmin=min(levels), vmax=max(levels))
        label, fmt = f"loss − {m:.3g} (log scale)", _two_digits
    with plt.rc_context(STYLE):
        ax = _axes(ax, column, "compressed")
        x, y = np.meshgrid(surface.xs, surface.ys, indexing="ij")
        extend = "neither" if auto else _extend(z, levels)
        if filled:
            cs = ax.contourf(x, y, z, levels=levels, cmap=CMAP, extend=extend, norm=norm)
        else:
            cs = ax.contour(x, y, z, levels=levels, cmap=CMAP, linewidths=0.8, extend=extend,
                            norm=norm)
            if label_levels:
                ax.clabel(cs, cs.levels[1::2], inline=True, fontsize=5, fmt=fmt)
        cbar = ax.figure.colorbar(cs, ax=ax, label=label, extend=extend)
        if not filled:
            cbar.ax.tick_params(length=0)
        if log:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            cbar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
            cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _two_digits(v)))
            cbar.ax.yaxis.set_minor_formatter(NullFormatter())
        ax.plot([0], [0], marker="*", color="k", ms=6, ls="none")
        _xy_labels(ax, surface)
        ax.set_aspect("equal", adjustable="box")
    _fonts(ax)
    return ax


def plot_heatmap(surface: Surface, ax: Any = None, *, log: bool = False,
                 field: str = "loss", column: str | float = "single") -> Any:
    """The loss (or `field="accuracy"`) as a colour map, with a labelled colorbar; NaN blank."""
    if field not in ("loss", "accuracy"):
        raise LandscapeError(f"field must be 'loss' or 'accuracy'; got {field!r}.")
    if field == "accuracy":
        if surface.accuracy is None:
            raise LandscapeError("this surface has no accuracy (not a classification task).")
        z, label = surface.accuracy, "accuracy"
    else:
        z, label = _z(surface, log), _zlabel(log)
    with plt.rc_context(STYLE):
        ax = _axes(ax, column, "compressed")
        mesh = ax.pcolormesh(surface.xs, surface.ys, np.ma.masked_invalid(z).T, cmap=CMAP,
                             shading="nearest", rasterized=True)
        ax.figure.colorbar(mesh, ax=ax, label=label)
        _xy_labels(ax, surface)
        ax.set_aspect("equal", adjustable="box")
    _fonts(ax)
    return ax


def plot_surface_3d(surface: Surface, ax: Any = None, *, log: bool = False,
                    zmax: float | None = None, column: str | float = "single") -> Any:
    """A 3D surface of the loss (on `fig.add_subplot(projection="3d")`).

    Nothing is clipped by default. With `zmax`, points above it are not drawn (left as holes,
    never flattened into a plateau the landscape does not have), the z axis stops at `zmax`, and
    a note above the axes states the clip and the share of points above it, e.g.
    "clipped at 1.5 (12% of the points above)" (`ax.clip_note` holds it, None without a clip).

    Args:
        surface: the `Surface`.
        ax: a 3D Axes (a new figure with one when None).
        log: draw log10(loss).
        zmax: clip the height at this value (in the drawn units) so a diverging rim does not
            flatten the basin; None (default) draws every point.
        column: width of a new figure: "single", "double" or inches.
    """
    z = _z(surface, log)
    zlabel, note = _zlabel(log), None
    finite = z[np.isfinite(z)]
    if zmax is not None and finite.size and not zmax > finite.min():
        raise LandscapeError(
            f"zmax={zmax:.4g} is at or below the lowest point drawn ({finite.min():.4g}"
            f"{', in log10 loss' if log else ''}): nothing would be left to draw; give a zmax "
            "above it, or none.")
    if zmax is not None:
        above = np.isfinite(z) & (z > zmax)
        if above.any():
            note = f"clipped at {zmax:.3g} ({above.mean():.0%} of the points above)"
        z = np.where(above, np.nan, z)
    with plt.rc_context(STYLE):
        own = ax is None
        if own:  # placed by hand: mplot3d's box leaves wide margins in a laid-out Axes
            from matplotlib.layout_engine import PlaceHolderLayoutEngine

            fig = plt.figure(figsize=figure_size(column, 0.8))
            fig.set_layout_engine(PlaceHolderLayoutEngine(adjust_compatible=True,
                                                          colorbar_gridspec=False))
            ax = fig.add_axes((-0.07, 0.06, 1.0, 0.96), projection="3d")
        elif getattr(ax, "name", "") != "3d":
            raise LandscapeError(
                "plot_surface_3d needs a 3D Axes: fig.add_subplot(projection='3d')."
            )
        x, y = np.meshgrid(surface.xs, surface.ys, indexing="ij")
        finite = z[np.isfinite(z)]
        ax.plot_surface(x, y, np.ma.masked_invalid(z), cmap=CMAP, linewidth=0,
                        antialiased=True, rstride=1, cstride=1,
                        vmin=finite.min() if finite.size else None,
                        vmax=finite.max() if finite.size else None)
        if zmax is not None and finite.size:
            ax.set_zlim(top=zmax)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(4))
        ax.tick_params(pad=-1, labelsize=6)
        ax.set_xlabel(r"$\alpha$ ($d_1$)", labelpad=1)
        ax.set_ylabel(r"$\beta$ ($d_2$)", labelpad=8)
        ax.set_zlabel(zlabel, labelpad=3)
        # labels take fixed inches: a wider canvas leaves the box more of itself
        wider = ax.figure.get_figwidth() - COLUMN_WIDTHS["single"]
        ax.set_box_aspect(None, zoom=min(1.12, 1.0 + 0.034 * wider) if own else 0.92)
        ax.clip_note = note
        if note is not None:
            ax.text2D(0.5, 0.97 if own else 1.0, note, transform=ax.transAxes, ha="center",
                      va="top", fontsize=STYLE["legend.fontsize"], color="0.25")
    _fonts(ax)
    return ax


def plot_trajectory(surface: Surface, path: TrajectoryPCA | np.ndarray, ax: Any = None, *,
                    levels: int | Sequence[float] = 12, log: bool = True,
                    column: str | float = "single") -> Any:
    """An optimization path over the contour of the PCA plane (Li et al. 2018, figure 9).

    Args:
        surface: the loss on the plane of the path's two directions, around the last checkpoint.
        path: a `TrajectoryPCA` (axes labelled with the explained variance) or (T, 2) coordinates.
        ax, levels, log, column: as in `plot_contour`.
    """
    coords = path.coords if isinstance(path, TrajectoryPCA) else np.asarray(path, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise LandscapeError(f"path coordinates must have shape (T, 2); got {coords.shape}.")
    with plt.rc_context(STYLE):
        ax = plot_contour(surface, ax, levels=levels, log=log, column=column)
        ax.plot(coords[:, 0], coords[:, 1], "-o", color=OKABE_ITO[3], ms=2.5, lw=1.0)
        if isinstance(path, TrajectoryPCA):
            ev = path.explained_variance
            ax.set_xlabel(f"PC 1 ({100 * ev[0]:.1f}%)")
            ax.set_ylabel(f"PC 2 ({100 * ev[1]:.1f}%)")
    return ax


def plot_track(track: Any, ax: Any = None, *, measure: str | None = None,
               lr: float | None = None, log: bool = False,
               column: str | float = "single") -> Any:
    """A measure of `landscape.track` against the training step.

    Args:
        track: a `Track` (rows with "step" and measure values; `<measure>_stderr` drawn as bars).
        ax: Axes to draw on (a new figure when None).
        measure: which column (default: the track's first measure).
        lr: learning rate; marks the edge of stability 2 / lr of gradient descent (Cohen et al.
            2021), meaningful for the top eigenvalue. The y axis fits the data: a 2 / lr within
            reach (below 1.5 times the largest value) is a dashed line, one far above is an arrow
            at the top edge with its value, so it never squashes the curve.
        log: logarithmic y axis.
        column: width of a new figure: "single", "double" or inches.
    """
    measure = measure or track.measures[0]
    if measure not in track.measures:
        raise LandscapeError(f"measure {measure!r} was not tracked; choose among "
                             f"{list(track.measures)}.")
    if lr is not None and not lr > 0:
        raise LandscapeError(f"lr must be positive; got {lr}.")
    steps = np.array(track.steps, dtype=float)
    values = np.array([np.nan if v is None else v for v in track.column(measure)], dtype=float)
    with plt.rc_context(STYLE):
        ax = _axes(ax, column)
        err = track.column(f"{measure}_stderr")
        if any(e is not None for e in err):
            ax.errorbar(steps, values, yerr=[0 if e is None else e for e in err], marker="o",
                        ms=3, capsize=2, color=OKABE_ITO[0])
        else:
            ax.plot(steps, values, marker="o", ms=3, color=OKABE_ITO[0])
        if log:
            ax.set_yscale("log")
        if lr is not None:
            _edge_of_stability(ax, values, 2.0 / lr, log)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_xlabel("step")
        ax.set_ylabel(measure.replace("_", " "))
    _fonts(ax)
    return ax


def _edge_of_stability(ax: Any, values: np.ndarray, edge: float, log: bool) -> None:
    """Mark 2 / lr: a dashed line when within reach of the data, else a note in a band of
    headroom above the data (the y axis keeps fitting the data)."""
    finite = values[np.isfinite(values)]
    hi = float(finite.max()) if finite.size else edge
    if edge <= 1.5 * hi:
        ax.axhline(edge, color="0.35", ls="--", lw=0.9)
        ax.annotate(f"2 / lr = {edge:.3g}", (0.02, edge), xycoords=("axes fraction", "data"),
                    xytext=(0, 2), textcoords="offset points", ha="left", va="bottom",
                    color="0.25", fontsize=7)
        return
    lo, top = ax.get_ylim()
    if log:
        ax.set_ylim(lo, top * (top / lo) ** 0.3)
    else:
        ax.set_ylim(lo, top + 0.3 * (top - lo))
    ax.text(0.02, 0.97, f"2 / lr = {edge:.3g} (edge of stability) is above this range",
            transform=ax.transAxes, ha="left", va="top", color="0.25", fontsize=7)


def track_figure(source: Any, **kwargs: Any) -> Any:
    """Sharpness against the training step with its edge of stability, loss below: the figure
    of a `CurvatureMonitor` log. See `landscape.track_plot.track_figure` for the arguments."""
    from .track_plot import track_figure as draw

    return draw(source, **kwargs)


def _zlabel(log: bool) -> str:
    return r"$\log_{10}$ loss" if log else "loss"


def _extend(z: np.ndarray, levels: int | Sequence[float]) -> str:
    """Which ends of explicit contour levels the data pass ("neither", "min", "max", "both")."""
    finite = z[np.isfinite(z)]
    if isinstance(levels, int) or finite.size == 0:
        return "neither"
    lv = np.asarray(levels, dtype=float)
    low, high = finite.min() < lv.min(), finite.max() > lv.max()
    return {(False, False): "neither", (True, False): "min", (False, True): "max",
            (True, True): "both"}[(bool(low), bool(high))]


def _xy_labels(ax: Any, surface: Surface) -> None:
    ax.set_xlabel(r"$\alpha$ (direction $d_1$)")
    ax.set_ylabel(r"$\beta$ (direction $d_2$)")




# re-exported: it draws with the helpers above
