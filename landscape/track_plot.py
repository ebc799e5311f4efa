"""The figure of sharpness during training: `track_figure` (also `landscape.plot.track_figure`).

Top panel: the sharpness of each run against the step (the top Hessian eigenvalue, or Adam's
preconditioned sharpness when the run measured it) with its edge of stability as a dashed line
of the same colour (2 / lr for gradient descent, (2 + 2 beta) / lr with momentum, (2 + 2 beta1)
/ (1 - beta1) for Adam, read from the rows' `eos_threshold`; a learning-rate schedule makes it a
staircase). Bottom panel: the loss on the measurement set (log scale), when the rows have it.
Paper style as in `landscape.plot` (column widths, fonts, Okabe-Ito colours).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .errors import LandscapeError
from .plot_style import OKABE_ITO, STYLE, subplots

SHARPNESS_KEYS = ("preconditioned_sharpness", "top_eigenvalue")
LABELS = {"top_eigenvalue": r"sharpness $\lambda_{\max}(H)$",
          "preconditioned_sharpness": r"$\lambda_{\max}(P^{-1}H)$"}


def as_rows(source: Any) -> list[dict[str, Any]]:
    """Rows from a monitor log (a `curvature.jsonl` path or its folder), a list of row dicts,
    a `CurvatureMonitor` (its `rows`) or a `Track`."""
    from .monitor import read_rows

    if isinstance(source, (str, os.PathLike)):
        return read_rows(source)
    if hasattr(source, "rows"):
        return list(source.rows)
    if isinstance(source, Sequence) and all(isinstance(r, Mapping) for r in source):
        return [dict(r) for r in source]
    raise LandscapeError(
        f"cannot read rows from a {type(source).__name__}; pass a curvature.jsonl path, a list "
        "of row dicts, a CurvatureMonitor or a Track."
    )


def _column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)


def _runs(source: Any) -> dict[str, list[dict[str, Any]]]:
    if isinstance(source, Mapping):
        runs = {str(k): as_rows(v) for k, v in source.items()}
    else:
        runs = {"": as_rows(source)}
    for label, rows in runs.items():
        if not rows:
            raise LandscapeError(f"run {label!r} has no rows to draw.")
    return runs


def track_figure(source: Any, *, sharpness: str | None = None, column: str | float = "single",
                 aspect: float | None = None, loss: bool = True, log_loss: bool = True) -> Any:
    """Sharpness against the training step with its edge of stability, loss below.

    Args:
        source: one run (a `curvature.jsonl` path or folder, a list of rows, a
            `CurvatureMonitor`, a `Track`) or a dict `{label: run}` to draw several (each its own
            colour, its threshold dashed in that colour).
        sharpness: the measure on the top panel: "top_eigenvalue" or
            "preconditioned_sharpness"; None picks the preconditioned one when the rows have
            it (an Adam run), else the top eigenvalue.
        column: figure width: "single", "double" or inches.
        aspect: height / width (default 1.0 with the loss panel, 0.62 without).
        loss: draw the loss panel when the rows have a "loss" column.
        log_loss: logarithmic loss axis.

    Returns:
        The matplotlib Figure (save it with `landscape.plot.save_figure`).

    Raises:
        LandscapeError: an empty run, or no run with the sharpness measure.
    """
    runs = _runs(source)
    first = next(iter(runs.values()))
    if sharpness is None:
        sharpness = next((k for k in SHARPNESS_KEYS if any(k in r for r in first)),
                         "top_eigenvalue")
    if sharpness not in SHARPNESS_KEYS:
        raise LandscapeError(f"sharpness must be one of {SHARPNESS_KEYS}; got {sharpness!r}.")
    if not any(sharpness in r for rows in runs.values() for r in rows):
        raise LandscapeError(f"no run has {sharpness!r} in its rows; measure it with the "
                             "monitor (measures=...).")
    with_loss = loss and any("loss" in r for rows in runs.values() for r in rows)
    if aspect is None:
        aspect = 1.0 if with_loss else 0.62
    fig, axes = subplots(2 if with_loss else 1, 1, column=column, aspect=aspect, sharex=True,
                         **({"gridspec_kw": {"height_ratios": [1.6, 1]}} if with_loss else {}))
    axes = np.atleast_1d(axes)
    with plt.rc_context(STYLE):
        for i, (label, rows) in enumerate(runs.items()):
            color = OKABE_ITO[i % len(OKABE_ITO)]
            steps = _column(rows, "step")
            axes[0].plot(steps, _column(rows, sharpness), color=color, label=label or None)
            _threshold(axes[0], rows, steps, color, sharpness)
            if with_loss:
                axes[1].plot(steps, _column(rows, "loss"), color=color)
        axes[0].set_ylabel(LABELS[sharpness])
        axes[0].set_ylim(bottom=0)
        if any(runs):
            axes[0].legend(loc="lower right", ncols=1)  # sharpness rises from low values
        if with_loss:
            axes[1].set_ylabel("loss")
            if log_loss:
                axes[1].set_yscale("log")
        axes[-1].set_xlabel("step")
    return fig


def _threshold(ax: Any, rows: list[dict[str, Any]], steps: np.ndarray, color: str,
               sharpness: str) -> None:
    """The run's edge of stability, dashed, with its value written at the right end."""
    edge = _column(rows, "eos_threshold")
    if not np.isfinite(edge).any():
        return
    ax.step(steps, edge, where="post", color=color, ls="--", lw=0.9, alpha=0.9)
    finite = np.isfinite(edge)
    last = edge[finite][-1]
    lr = _column(rows, "lr")[finite][-1]
    plain_gd = sharpness == "top_eigenvalue" and math.isclose(last, 2.0 / lr, rel_tol=1e-9)
    text = f"{'2/lr' if plain_gd else 'edge'} = {last:.3g}"
    # below the line: at the edge of stability the sharpness hovers just above it
    ax.annotate(text, (1.0, last), xycoords=("axes fraction", "data"), xytext=(-2, -2),
                textcoords="offset points", ha="right", va="top", color=color, fontsize=7)
