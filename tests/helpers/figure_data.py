"""Deterministic results to draw: analytic surfaces, lines, densities and tracks (no model).

The image baselines in tests/baseline/ are drawn from these, so they never depend on a trained
network, a seed of torch or the machine's arithmetic.
"""

from __future__ import annotations

import numpy as np

from landscape.surface import Line, Surface
from landscape.track import Track


def bowl_surface(n: int = 21, m: int = 17) -> Surface:
    """An anisotropic bowl whose rim rises steeply: loss = 0.05 + x^2 + 4 y^2 + 3 x^4 + x y,
    on a non-square grid (x in [-1, 1] with n points, y in [-0.8, 0.8] with m points)."""
    xs, ys = np.linspace(-1.0, 1.0, n), np.linspace(-0.8, 0.8, m)
    x, y = np.meshgrid(xs, ys, indexing="ij")
    loss = 0.05 + x ** 2 + 4 * y ** 2 + 3 * x ** 4 + x * y
    accuracy = np.clip(1.0 - 0.3 * (x ** 2 + y ** 2), 0.0, 1.0)
    return Surface(xs, ys, loss, accuracy, None, ({}, {}), 0.0, 100, None, 0, "bowl")


def parabola_lines(count: int = 3) -> list[Line]:
    """`count` parabolas f(a) = c + k a^2 with accuracies just below 1 (curves that a shared
    axis would merge)."""
    alphas = np.linspace(-1.0, 1.0, 41)
    out = []
    for k in range(count):
        loss = 0.01 * (k + 1) + (0.5 + k) * alphas ** 2
        accuracy = 1.0 - 0.002 * (k + 1) - 0.01 * (k + 1) * alphas ** 2
        out.append(Line(alphas, loss, accuracy, None, {}, 100, None, 0, None))
    return out


class Density:
    """A spectral density with a bulk near 0 and a few outliers, as SLQ returns them."""

    def __init__(self) -> None:
        self.grid = np.linspace(-2.0, 40.0, 400)
        bulk = np.exp(-self.grid ** 2 / (2 * 0.05 ** 2)) / (0.05 * np.sqrt(2 * np.pi))
        outliers = sum(np.exp(-(self.grid - c) ** 2 / 2) / np.sqrt(2 * np.pi) * 1e-3
                       for c in (12.0, 25.0, 37.0))
        self.density = 0.99 * bulk + outliers


def eigenvalue_track() -> Track:
    """Top eigenvalue 0.7 -> 3 over training (progressive sharpening), far below 2 / lr = 40."""
    steps = [0, 100, 200, 300, 400, 500]
    values = [0.7, 1.1, 1.6, 2.2, 2.7, 3.0]
    rows = [{"checkpoint": f"ckpt_{s}.pt", "step": s, "top_eigenvalue": v, "seconds": 1.0}
            for s, v in zip(steps, values)]
    return Track(rows, ("top_eigenvalue",), 0)
