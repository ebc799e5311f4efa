"""Re-estimating BatchNorm running statistics at displaced weights.

Away from a checkpoint (between two minima, on a loss surface) the stored running mean and
variance no longer describe the network's activations: an interpolated network's activations
shrink ("variance collapse", Jordan et al. 2023), so evaluating it with either end's statistics,
or with interpolated ones, overstates its loss. Re-estimating them means: reset, then run the
data through the network with only the BatchNorm layers in train mode (dropout and the rest
stay in eval mode) and `momentum=None`, so that each running statistic becomes the plain mean of
its per-batch values (what `torch.optim.swa_utils.update_bn` does, without switching dropout on).

The caller wraps the work in `statistics_restored`, which puts every buffer, momentum and mode
back bitwise afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .errors import LandscapeError

_BatchNorm = nn.modules.batchnorm._BatchNorm


def running_stat_modules(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


@contextlib.contextmanager
def statistics_restored(model: nn.Module) -> Iterator[list[_BatchNorm]]:
    """Yields the BatchNorm layers; afterwards their buffers, momenta and every module's
    train/eval mode are as before, bitwise."""
    layers = running_stat_modules(model)
    backup = [{n: b.detach().clone() for n, b in m.named_buffers(recurse=False)} for m in layers]
    momenta = [m.momentum for m in layers]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield layers
    finally:
        with torch.no_grad():
            for m, saved in zip(layers, backup):
                for n, b in m.named_buffers(recurse=False):
                    b.copy_(saved[n])
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, mode in modes:
            m.training = mode


def reestimate(layers: list[_BatchNorm], run: Callable[[], None]) -> None:
    """Reset `layers`' statistics and re-estimate them while `run()` passes the data through the
    model (in eval mode apart from these layers); the layers are in eval mode on return."""
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the plain mean over the batches
        m.train()
    try:
        with torch.no_grad():
            run()
    finally:
        for m in layers:
            m.eval()


def input_batches(data: Any, batch_size: int = 256) -> list[Any]:
    """Batches of model inputs to estimate statistics on, from an inputs tensor or an
    `(inputs, targets)` tensor pair (split into batches of `batch_size`), or from an iterable of
    batches whose first element is the inputs (or of bare inputs)."""
    if isinstance(data, Tensor):
        out = list(data.split(batch_size))
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, Tensor) for t in data):
        out = list(data[0].split(batch_size))
    else:
        out = [b[0] if isinstance(b, (tuple, list)) else b for b in data]
    if not out:
        raise LandscapeError("bn_data is empty: give the inputs to estimate the BatchNorm "
                             "statistics on.")
    if any(not isinstance(x, (Tensor, dict, list, tuple)) for x in out):
        kinds = sorted({type(x).__name__ for x in out})
        raise LandscapeError(f"bn_data must hold model inputs (tensors); got batches of {kinds}. "
                             "Pass an inputs tensor, an (inputs, targets) pair of tensors, or "
                             "batches whose first element is the inputs.")
    return out
