"""Refuse a loss that sums over the batch instead of averaging it.

Every measure of this package is defined on L(w), the mean loss per sample (DESIGN.md, "The
probe"). A `loss_fn` with `reduction="sum"` gives L(w) times the batch size: every eigenvalue,
trace and sharpness then grows with the batch size, silently. Two checks catch it:

- `check_reduction(loss_fn)`, when the probe is made: a torch loss module (`nn.CrossEntropyLoss`,
  `nn.MSELoss`, ...) or a `functools.partial` of a functional loss whose `reduction` is not
  "mean" is refused (a "batchmean" KL divergence is a mean too).
- `check_mean_over_batch(model, loss_fn, batch)`, on the probe's first pass over the data: the
  loss of a few samples is compared with the loss of the same samples given twice. A mean gives
  the same number; a sum gives twice it. Only the loss function runs twice (one forward pass of
  the model on at most 4 samples), so the check costs nothing against a measurement.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from .errors import LandscapeError
from .probe_data import call_model, unpack

_MEAN_REDUCTIONS = ("mean", "batchmean")
_FIX = ("use reduction='mean' (e.g. nn.CrossEntropyLoss()), or divide your loss by the batch "
        "size: the probe measures the mean loss per sample, so a summed loss makes every "
        "curvature grow with the batch size.")


def check_reduction(loss_fn: Any) -> None:
    """Refuse a torch loss module or a partial of a loss function that does not average.

    Raises:
        LandscapeError: `loss_fn.reduction` (or the partial's `reduction=`) is "sum" or "none".
    """
    reduction = getattr(loss_fn, "reduction", None)
    if isinstance(loss_fn, functools.partial):
        reduction = loss_fn.keywords.get("reduction", reduction)
    if isinstance(reduction, str) and reduction not in _MEAN_REDUCTIONS:
        raise LandscapeError(f"loss_fn has reduction={reduction!r}; {_FIX}")


def check_mean_over_batch(model: Any, loss_fn: Any, batch: Any, n: int = 4) -> None:
    """Refuse a `loss_fn` whose value doubles when the batch is given twice (a sum).

    With outputs o and targets t of the first `n` samples, a mean satisfies
    loss_fn([o; o], [t; t]) = loss_fn(o, t); a sum gives 2 loss_fn(o, t). Batches that are not
    `(inputs, targets)` of tensors, and a zero loss (an exact fit), are not checked.

    Raises:
        LandscapeError: the loss doubles.
    """
    try:
        inputs, targets = unpack(batch)
    except Exception:  # noqa: BLE001 - the probe's own unpacking reports bad batches
        return
    if not (isinstance(inputs, Tensor) and isinstance(targets, Tensor)) or inputs.ndim == 0 \
            or targets.ndim == 0 or len(inputs) < 1 or len(targets) != len(inputs):
        return
    try:
        with torch.no_grad():
            outputs = call_model(model, inputs[:n])
            if not isinstance(outputs, Tensor):
                return
            t = targets[:n].to(outputs.device)
            once = loss_fn(outputs, t)
            twice = loss_fn(torch.cat([outputs, outputs]), torch.cat([t, t]))
    except Exception:  # noqa: BLE001 - the probe's own pass reports a failing model or loss
        return
    if not (isinstance(once, Tensor) and once.numel() == 1 and twice.numel() == 1):
        return
    once, twice = float(once), float(twice)
    if not (math.isfinite(once) and math.isfinite(twice)) or once == 0.0:
        return
    if abs(twice / once - 2.0) < 1e-3:
        raise LandscapeError(f"loss_fn sums over the batch (the loss of a batch given twice is "
                             f"twice its loss: {twice:.6g} vs {once:.6g}); {_FIX}")
