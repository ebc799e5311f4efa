"""Figure of `batch_size_spectrum`: the top Hessian eigenvalue against the batch size.

Drawn in the paper style of `landscape.plot` (`STYLE`, column widths); returns the Axes and
never calls `show()`.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from .errors import LandscapeError
from .plot_style import OKABE_ITO, STYLE, subplots


def plot_batch_spectrum(spectrum: Any, ax: Any = None, *, show_batches: bool = True,
                        column: str | float = "single") -> Any:
    """lambda_max of mini-batch Hessians against the batch size m, log-log, with the full data.

    Each batch size gets the mean over its batches with one standard error (error bars), and,
    with `show_batches`, every batch's value as a faint dot; the full-data value lambda_max(H)
    is a dashed horizontal line. A right-hand axis reads the same heights as 2 / lambda, the
    largest stable learning rate of gradient descent on the quadratic model.

    Args:
        spectrum: a `BatchSpectrum` (from `landscape.batch_size_spectrum`).
        ax: Axes to draw on (a new figure when None).
        show_batches: draw each batch's value too.
        column: width of a new figure: "single", "double" or inches.

    Raises:
        LandscapeError: a result without rows, or non-positive values (no log axis for them).
    """
    rows = getattr(spectrum, "rows", None)
    if not rows:
        raise LandscapeError("plot_batch_spectrum needs a BatchSpectrum with at least one row "
                             "(from landscape.batch_size_spectrum).")
    sizes = np.array([r.batch_size for r in rows], dtype=float)
    means = np.array([r.mean for r in rows], dtype=float)
    errs = np.array([0.0 if not np.isfinite(r.stderr) else r.stderr for r in rows])
    values = [np.asarray(r.values, dtype=float) for r in rows]
    full = float(spectrum.full_value)
    if full <= 0 or np.any(means <= 0) or any(np.any(v <= 0) for v in values):
        raise LandscapeError("plot_batch_spectrum draws log-log axes and needs positive top "
                             "eigenvalues; some are <= 0 (read them from the result instead).")
    order = np.argsort(sizes)
    with plt.rc_context(STYLE):
        if ax is None:
            _, ax = subplots(column=column)
        if show_batches:
            for m, v in zip(sizes, values):
                ax.scatter(np.full(len(v), m), v, s=4, color=OKABE_ITO[5], alpha=0.45,
                           linewidths=0, zorder=1)
        ax.errorbar(sizes[order], means[order], yerr=errs[order], marker="o", ms=3, capsize=2,
                    color=OKABE_ITO[0], label="batch mean ± s.e.", zorder=3)
        ax.axhline(full, color="0.3", ls="--", lw=0.9,
                   label=f"full data (n = {spectrum.n_samples})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # the batch sizes themselves as ticks, in plain numbers (no crowded minor labels)
        ax.xaxis.set_major_locator(FixedLocator(np.unique(sizes)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("batch size $m$")
        ax.set_ylabel(r"top eigenvalue $\lambda_{\max}(H_m)$")
        lr_axis = ax.secondary_yaxis("right", functions=(_two_over, _two_over))
        lr_axis.set_ylabel(r"$2/\lambda$: largest stable GD learning rate")
        ax.legend(loc="upper right")
    return ax


def _two_over(x: Any) -> Any:
    """2 / x (its own inverse), for the learning-rate axis; 0 stays out of the log axis."""
    with np.errstate(divide="ignore"):
        return 2.0 / np.asarray(x, dtype=float)
