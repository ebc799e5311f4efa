"""Directions in parameter space for loss lines and surfaces (Li et al. 2018).

A `Direction` is a flat vector of length `probe.num_params` (the probe's dtype and device) plus
how it was made. Random directions are drawn from N(0, I) with their own `torch.Generator` and
scaled per filter, per layer or over the whole model so that a step of 1 has the size of the
weights (filter normalization makes curves of scale-equivalent networks comparable).

Normalization (docs/measures.md, "Directions, surfaces and barriers"), for each probed
parameter w with d its part of the direction:

* "filter": for parameters with more than one dimension and each filter i (dim 0: a conv output
  channel, a Linear row), d_i <- d_i * ||w_i|| / (||d_i|| + 1e-10). The 1e-10 guards a zero row of
  d (the direction's filter norm), it is Li et al.'s constant.
* "layer": the same with the whole tensor as one filter.
* "model": d <- d * ||w|| / ||d|| over the whole vector (after the ignore rule below).
* None: d unchanged.

Parameters with zero or one dimension (biases, normalization scales and shifts) get d = 0 when
`ignore="biasbn"` (the default for random directions), else d = w for "filter" and "layer"
(Li et al.'s choice: such parameters move in proportion to themselves) and d unchanged otherwise.

References:
    Li, Xu, Taylor, Studer, Goldstein. Visualizing the Loss Landscape of Neural Nets. NeurIPS 2018.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._reduce import fdot, fnorm
from ._results import to_jsonable
from ._validate import OneOf, validate_params
from .checkpoint import read_state_dict
from .errors import LandscapeError
from .probe import Probe

NORMALIZATIONS = ("filter", "layer", "model", None)
IGNORE = ("biasbn", None)
_direction_options = validate_params(normalization=OneOf(NORMALIZATIONS), ignore=OneOf(IGNORE))
_EPS = 1e-10  # Li et al.'s guard against a zero filter of the random direction

Checkpoint = Mapping[str, Any] | nn.Module | str | os.PathLike


@dataclass(frozen=True, eq=False)
class Direction:
    """A direction in the probe's flat parameter space and how it was made.

    Attributes:
        vector: flat tensor of length `probe.num_params` (probe dtype and device).
        normalization: "filter", "layer", "model" or None (applied as described in the module).
        ignore: "biasbn" (biases and normalization parameters zeroed) or None.
        seed: the seed of a random direction, None otherwise.
        source: "random", "vector", "checkpoint", "pca" or "eigenvector".
    """

    vector: Tensor
    normalization: str | None
    ignore: str | None
    seed: int | None
    source: str

    @property
    def norm(self) -> float:
        """Euclidean norm ||d||."""
        return fnorm(self.vector)

    def cosine(self, other: Direction | Tensor) -> float:
        """cos(d, e) = <d, e> / (||d|| ||e||) (NaN when either is zero)."""
        return cosine(self, other)

    def to_dict(self) -> dict[str, Any]:
        """How the direction was made and its norm (the vector itself is left out)."""
        return to_jsonable({"normalization": self.normalization, "ignore": self.ignore,
                            "seed": self.seed, "source": self.source, "norm": self.norm,
                            "num_params": self.vector.numel()})


def cosine(a: Direction | Tensor, b: Direction | Tensor) -> float:
    """Cosine similarity of two flat vectors or directions (NaN when either is zero)."""
    va = (a.vector if isinstance(a, Direction) else a).detach().reshape(-1)
    vb = (b.vector if isinstance(b, Direction) else b).detach().reshape(-1)
    if va.numel() != vb.numel():
        raise LandscapeError(f"cannot compare vectors of {va.numel()} and {vb.numel()} entries.")
    vb = vb.to(va.device)
    denom = fnorm(va) * fnorm(vb)
    return fdot(va, vb) / denom if denom > 0 else float("nan")


@_direction_options
def random_direction(probe: Probe, *, normalization: str | None = "filter",
                     ignore: str | None = "biasbn", seed: int = 0) -> Direction:
    """A Gaussian random direction d ~ N(0, I), normalized (filter-wise by default).

    Args:
        probe: defines the parameters, their order, dtype and device.
        normalization: "filter" (Li et al.), "layer", "model" or None (raw Gaussian).
        ignore: "biasbn" zeroes parameters with <= 1 dimension; None keeps them (d = w for
            "filter" and "layer").
        seed: seeds the direction's own `torch.Generator` (drawn on CPU in float64, then cast, so
            the same seed gives the same direction on every device and dtype).

    Returns:
        A `Direction` with `source="random"`.

    Example:
        >>> import torch
        >>> from landscape import Probe, random_direction
        >>> lin = torch.nn.Linear(3, 2)
        >>> d = random_direction(Probe(lin, (torch.randn(4, 3), torch.zeros(4).long())))
        >>> torch.allclose(d.vector[:6].view(2, 3).norm(dim=1), lin.weight.norm(dim=1).detach())
        True
    """
    gen = torch.Generator().manual_seed(int(seed))
    raw = torch.randn(probe.num_params, generator=gen, dtype=torch.float64)
    raw = raw.to(device=probe.device, dtype=probe.dtype)
    vec = normalize(probe, raw, normalization=normalization, ignore=ignore)
    return Direction(vec, normalization, ignore, int(seed), "random")


@_direction_options
def direction_from_vector(probe: Probe, v: Tensor, normalization: str | None = None, *,
                          ignore: str | None = None, source: str = "vector") -> Direction:
    """A direction from a flat tensor (a Hessian eigenvector, a gradient), optionally normalized.

    Args:
        probe: defines the parameters and their order.
        v: flat tensor of length `probe.num_params` (cast to the probe's dtype and device).
        normalization: as in `random_direction`; None keeps v as is.
        ignore: as in `random_direction`; None (default) keeps every entry.
        source: a label stored with the direction ("vector", "eigenvector", ...).
    """
    vec = as_vector(probe, v, "v")
    vec = normalize(probe, vec.clone(), normalization=normalization, ignore=ignore)
    return Direction(vec, normalization, ignore, None, source)


@_direction_options
def direction_from_checkpoint(probe: Probe, other: Checkpoint, *,
                              normalization: str | None = None,
                              ignore: str | None = None) -> Direction:
    """The direction d = w_B - w_A from the probe's weights w_A to another checkpoint's w_B.

    Only the probed parameters count; buffers (BatchNorm running statistics) are not part of it.

    Args:
        probe: the model at w_A.
        other: a state dict, a model, or a checkpoint path (read by `landscape.read_state_dict`).
        normalization, ignore: as in `direction_from_vector` (None: the raw difference, so that
            a step of 1 reaches w_B).
    """
    diff = flat_from_checkpoint(probe, other) - probe.flat_params()
    vec = normalize(probe, diff, normalization=normalization, ignore=ignore)
    return Direction(vec, normalization, ignore, None, "checkpoint")


@_direction_options
def normalize(probe: Probe, d: Tensor, *, normalization: str | None = "filter",
              ignore: str | None = "biasbn") -> Tensor:
    """Scale the flat direction `d` in place by the rules in the module docstring; returns it."""
    w = probe.flat_params()
    for info in probe.param_info:
        di, wi = d[info.start:info.stop], w[info.start:info.stop]
        if info.ndim <= 1:
            if ignore == "biasbn":
                di.zero_()
            elif normalization in ("filter", "layer"):
                di.copy_(wi)
            continue
        if normalization == "filter":
            rows_d, rows_w = di.view(info.shape[0], -1), wi.view(info.shape[0], -1)
            scale = rows_w.norm(dim=1, keepdim=True) / (rows_d.norm(dim=1, keepdim=True) + _EPS)
            rows_d.mul_(scale)
        elif normalization == "layer":
            di.mul_(fnorm(wi) / (fnorm(di) + _EPS))
    if normalization == "model":
        keep = torch.ones_like(w, dtype=torch.bool)
        if ignore == "biasbn":
            for info in probe.param_info:
                if info.ndim <= 1:
                    keep[info.start:info.stop] = False
        d.mul_(fnorm(w[keep]) / (fnorm(d) + _EPS))
    return d


def as_vector(probe: Probe, d: Direction | Tensor, what: str = "direction") -> Tensor:
    """The flat tensor of a `Direction` or tensor, checked and cast to the probe's dtype/device."""
    vec = d.vector if isinstance(d, Direction) else d
    if not isinstance(vec, Tensor):
        raise LandscapeError(
            f"{what} must be a landscape.Direction or a flat torch.Tensor; got "
            f"{type(d).__name__}."
        )
    if vec.numel() != probe.num_params:
        raise LandscapeError(
            f"{what} has {vec.numel()} entries but the probe has num_params={probe.num_params}; "
            "make it with random_direction(probe) or a tensor of probe.num_params entries."
        )
    return vec.detach().reshape(-1).to(device=probe.device, dtype=probe.dtype)


def flat_from_checkpoint(probe: Probe, other: Checkpoint) -> Tensor:
    """The probed parameters of another checkpoint as a flat vector in the probe's layout."""
    state = read_state_dict(other)
    missing = [n for n in probe.param_names if n not in state]
    if missing:
        raise LandscapeError(
            f"the other checkpoint lacks the probed parameters {missing[:10]}; it must come from "
            "the same architecture as the probe's model."
        )
    parts = []
    for info in probe.param_info:
        t = state[info.name]
        if tuple(t.shape) != info.shape:
            raise LandscapeError(
                f"parameter {info.name!r} has shape {tuple(t.shape)} in the other checkpoint but "
                f"{info.shape} in the probe's model; use checkpoints of the same architecture."
            )
        parts.append(t.detach().reshape(-1).to(device=probe.device, dtype=probe.dtype))
    return torch.cat(parts)

