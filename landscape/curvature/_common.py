"""Shared plumbing of the curvature estimators: options, the operator, groups, randomness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import LandscapeError
from ..probe import ParamSelection, Probe
from .results import LayerResults

CURVATURES = ("hessian", "ggn")
GROUPINGS = (None, "layer", "parameter")

MatVec = Callable[[Tensor], Tensor]


def check_option(name: str, value: Any, allowed: tuple) -> None:
    """Raise LandscapeError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise LandscapeError(f"{name} must be one of {allowed}; got {value!r}.")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LandscapeError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise LandscapeError(f"{name} must be a positive number; got {value!r}.")


def check_probe(probe: Any) -> None:
    if not isinstance(probe, Probe):
        raise LandscapeError(
            f"probe must be a landscape.Probe; got {type(probe).__name__}. Build one with "
            "landscape.Probe(model, data)."
        )


def operator(probe: Probe, curvature: str) -> MatVec:
    """The matrix-vector product of the chosen curvature matrix at w (flat vectors)."""
    check_option("curvature", curvature, CURVATURES)
    if curvature == "ggn":
        if probe.batch_loss is not None:
            raise LandscapeError(
                "curvature='ggn' needs the model outputs and loss_fn separately; it is not "
                "available with batch_loss=. Use curvature='hessian' instead."
            )
        return probe.ggn_vp
    return probe.hvp


def generator(probe: Probe, seed: int) -> torch.Generator:
    """A CPU generator seeded by `seed` (the global RNG is never touched). Draws are made on the
    CPU and moved to the probe's device: CUDA draws depend on the GPU model (its number of
    multiprocessors), so ranks on different GPUs would get different vectors."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LandscapeError(f"seed must be an integer; got {seed!r}.")
    return torch.Generator().manual_seed(seed)


def rademacher(n: int, gen: torch.Generator, probe: Probe, count: int | None = None) -> Tensor:
    """Random signs +-1 of shape (n,) or (n, count) in the probe's dtype and device."""
    shape = (n,) if count is None else (n, count)
    z = torch.randint(0, 2, shape, generator=gen).to(probe.device)
    return z.to(probe.dtype).mul_(2).sub_(1)


def select(probe: Probe, params: ParamSelection) -> Probe:
    """The probe itself, or the probe restricted to `params` (its Hessian block)."""
    return probe if params is None else probe.restricted(params)


def per_group(probe: Probe, by: str | None, estimate: Callable[[Probe], Any]) -> Any:
    """`estimate(probe)` for the whole probe (by=None) or a LayerResults over its groups."""
    check_option("by", by, GROUPINGS)
    if by is None:
        return estimate(probe)
    if by == "layer":
        groups = {name: [i.name for i in infos] for name, infos in probe.layers().items()}
    else:
        groups = {i.name: [i.name] for i in probe.param_info}
    results, sizes = {}, {}
    for name, names in groups.items():
        sub = probe.restricted(names)
        results[name] = estimate(sub)
        sizes[name] = sub.num_params
    return LayerResults(results, sizes)
