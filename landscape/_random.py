"""Seeded random draws for the stochastic estimators.

Draws are made on the CPU from a `torch.Generator` and then moved to the device: the global RNG
is never touched, and CUDA draws depend on the GPU model (its number of multiprocessors), so
ranks on different GPUs would otherwise get different vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._vector_space import drawn
from .errors import LandscapeError


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded by `seed` (an int)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LandscapeError(f"seed must be an integer; got {seed!r}.")
    return torch.Generator().manual_seed(seed)


def normal_like(like: Tensor, gen: torch.Generator) -> Tensor:
    """Standard normal draws with the shape, dtype and device of `like` (a shard's draws over a
    sharded model's vectors)."""
    return drawn(tuple(like.shape),
                 lambda shape: torch.randn(shape, generator=gen, dtype=like.dtype)
                 ).to(like.device)


def uniform_like(like: Tensor, gen: torch.Generator) -> Tensor:
    """Uniform draws in [0, 1) with the shape, dtype and device of `like` (as `normal_like`)."""
    return drawn(tuple(like.shape),
                 lambda shape: torch.rand(shape, generator=gen, dtype=like.dtype)
                 ).to(like.device)


def normal(n: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """n standard normal draws on the CPU (a shard's draws over a sharded model's vectors)."""
    return drawn((n,), lambda shape: torch.randn(shape, generator=gen, dtype=dtype))


_CHUNK = 2**20  # draws made at a time, so a draw never holds more than its result in memory


def rademacher(shape: tuple[int, ...], gen: torch.Generator, device: torch.device,
               dtype: torch.dtype) -> Tensor:
    """Random signs +-1 of the given shape, dtype and device.

    Drawn in chunks of 2^20 (the same values as one draw), so the int64 draws take 8 MB, not
    twice the result. A shard's draws over a sharded model's vectors (first dimension this
    rank's share) are this rank's rows of the full draw."""
    return drawn(shape, lambda full: _signs(full, gen, device, dtype))


def _signs(shape: tuple[int, ...], gen: torch.Generator, device: torch.device,
           dtype: torch.dtype) -> Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    flat = out.view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        count = min(_CHUNK, flat.numel() - start)
        bits = torch.randint(0, 2, (count,), generator=gen)
        flat[start : start + count].copy_(bits)
    return out.mul_(2).sub_(1)
