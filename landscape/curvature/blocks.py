"""Parameter groups of the curvature estimators (`by=`) and the heterogeneity of block spectra.

`by` is "layer" (one group per module), "parameter" (one per tensor) or a dict of block name ->
parameter names, module prefixes or glob patterns (`landscape.param_select`). Each group gets
the estimate for its diagonal block of the Hessian.

Heterogeneity (Zhang et al., "Why Transformers Need Adam: A Hessian Perspective", 2024): the
Jensen-Shannon distance between the spectral densities of two blocks,

    JS(p, q) = sqrt( (KL(p || m) + KL(q || m)) / 2 ),   m = (p + q) / 2,   log base 2,

between 0 (the same density) and 1 (disjoint supports). Every block's density is re-broadened
from its quadrature nodes and weights with one common Gaussian width sigma on one common grid,
so that distances do not depend on each block's own smoothing; sigma is part of the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from .._checks import check_option
from ..errors import LandscapeError
from ..param_select import blocks

GROUPINGS = (None, "layer", "parameter")


def groups(probe: Any, by: Any) -> dict[str, list[str]]:
    """Group name -> probed parameter names for `by` ("layer", "parameter" or a dict)."""
    if isinstance(by, dict):
        return blocks(probe.param_names, by)
    check_option("by", by, GROUPINGS)
    if by == "layer":
        return {name: [i.name for i in infos] for name, infos in probe.layers().items()}
    return {i.name: [i.name] for i in probe.param_info}


@dataclass(frozen=True)
class BlockDistances:
    """Pairwise Jensen-Shannon distances between the spectral densities of blocks.

    Attributes:
        names: the blocks, in order.
        distances: (len(names), len(names)) symmetric matrix, zero diagonal, values in [0, 1]
            (base-2 logarithms).
        sigma: the common Gaussian width every block's density was broadened with
            (eigenvalue units).
        grid: the number of points of the common eigenvalue grid.
    """

    names: list[str]
    distances: np.ndarray
    sigma: float
    grid: int

    def __getitem__(self, pair: tuple[str, str]) -> float:
        a, b = pair
        return float(self.distances[self.names.index(a), self.names.index(b)])

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "distances": self.distances.tolist(),
                "sigma": self.sigma, "grid": self.grid}


def js_distances(densities: dict[str, Any], sigma: float | None = None,
                 grid: int = 2000) -> BlockDistances:
    """Pairwise JS distances of `densities` (DensityResults by block name).

    Args:
        densities: block name -> a result with `nodes` and `weights` (a `DensityResult`).
        sigma: the common broadening width; None: 1% of the span of all blocks' nodes (the
            rule `hessian_density` uses for one block), so the width is stated in the result.
        grid: points of the common grid (from the smallest node - 5 sigma to the largest + 5).
    """
    names = list(densities)
    if len(names) < 2:
        raise LandscapeError("JS distances need at least two blocks; pass by= with two or more.")
    if any(not hasattr(r, "nodes") or not hasattr(r, "weights") for r in densities.values()):
        raise LandscapeError(
            "JS distances need spectral densities (hessian_density(..., by=...)); these "
            "results have no quadrature nodes and weights."
        )
    nodes = np.concatenate([np.asarray(r.nodes, dtype=float) for r in densities.values()])
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        spread = hi - lo
        sigma = 0.01 * (spread if spread > 0 else max(abs(hi), 1.0))
    if not (math.isfinite(sigma) and sigma > 0):
        raise LandscapeError(f"sigma must be a positive number; got {sigma!r}.")
    axis = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(grid))
    dens = []
    for r in densities.values():
        z = (axis[:, None] - np.asarray(r.nodes, dtype=float)[None, :]) / sigma
        dens.append(np.exp(-0.5 * z**2) @ np.asarray(r.weights, dtype=float))
    k = len(names)
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            out[i, j] = out[j, i] = float(jensenshannon(dens[i], dens[j], base=2))
    return BlockDistances(names, out, float(sigma), int(grid))
