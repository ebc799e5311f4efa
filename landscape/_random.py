"""Seeded random draws for the stochastic estimators.

Draws are made on the CPU from a `torch.Generator` and then moved to the device: the global RNG
is never touched, and CUDA draws depend on the GPU model (its number of multiprocessors), so
ranks on different GPUs would otherwise get different vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import LandscapeError


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded by `seed` (an int)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LandscapeError(f"seed must be an integer; got {seed!r}.")
    return torch.Generator().manual_seed(seed)


def normal_like(like: Tensor, gen: torch.Generator) -> Tensor:
    """Standard normal draws with the shape, dtype and device of `like`."""
    return torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)


def rademacher(shape: tuple[int, ...], gen: torch.Generator, device: torch.device,
               dtype: torch.dtype) -> Tensor:
    """Random signs +-1 of the given shape, dtype and device."""
    z = torch.randint(0, 2, shape, generator=gen).to(device)
    return z.to(dtype).mul_(2).sub_(1)
