"""Flat vectors split over ranks: the reductions and random draws of a sharded probe.

A probe over a sharded model (`landscape.sharded`, FSDP2) keeps every flat vector the way the
parameters are kept: each rank stores only its own elements of the full vector of N entries
(its local shard of each parameter, in parameter order). While such a probe measures
(`using(layout)`, entered by the estimators that support it), the helpers of `landscape._reduce`
add their partial sums over the ranks (`reduced`: the float64 partial sum of each rank,
all-reduced, so an inner product is sum over ranks of sum over local elements, accumulated in
float64 as in one process), and the random draws of `landscape._random` draw the full vector from
the seed and keep this rank's elements (`drawn`), so the vectors the ranks hold together are
exactly the ones one process draws. A draw holds one full-length vector for a moment.

Outside `using` (and for vectors of another length than this rank's share) nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import LandscapeError


@dataclass(frozen=True)
class Layout:
    """Where this rank's elements sit in the full flat vector.

    Attributes:
        numel: N, the length of the full vector (all ranks' elements).
        pieces: (start, stop) ranges of the full vector held by this rank, in order; their
            concatenation is this rank's vector.
        all_sum: sums a float64 tensor over the ranks in place and returns it (a collective:
            every rank calls it in the same order).
    """

    numel: int
    pieces: tuple[tuple[int, int], ...]
    all_sum: Callable[[Tensor], Tensor]

    @property
    def local(self) -> int:
        """The number of elements this rank holds."""
        return sum(b - a for a, b in self.pieces)

    def take(self, full: Tensor) -> Tensor:
        """This rank's rows of `full` (first dimension N)."""
        return torch.cat([full[a:b] for a, b in self.pieces])


_ACTIVE: ContextVar[Layout | None] = ContextVar("landscape_layout", default=None)


@contextlib.contextmanager
def using(layout: Layout | None) -> Iterator[None]:
    """Vectors of `layout.local` entries are this rank's shards inside the block (None: no
    change)."""
    if layout is None:
        yield
        return
    token = _ACTIVE.set(layout)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> Layout | None:
    """The layout in force, or None."""
    return _ACTIVE.get()


def _mine(n: int) -> Layout | None:
    layout = _ACTIVE.get()
    return layout if layout is not None and n == layout.local else None


def reduced(partial: Tensor, n: int) -> Tensor:
    """A sum over the elements of vectors of length `n`: summed over the ranks when they are
    this rank's shards (float64 partial sums, all-reduced), else `partial` itself."""
    layout = _mine(n)
    return partial if layout is None else layout.all_sum(partial)


def dimension(n: int) -> int:
    """The full length N when vectors of length `n` are shards, else `n`."""
    layout = _mine(n)
    return n if layout is None else layout.numel


def drawn(shape: tuple[int, ...], draw: Callable[[tuple[int, ...]], Tensor]) -> Tensor:
    """`draw(shape)`, or, for a shard's shape (first dimension this rank's length), this rank's
    rows of `draw((N, ...))`: the full draw's values, the same as one process's."""
    layout = _mine(shape[0]) if shape else None
    if layout is None:
        return draw(shape)
    return layout.take(draw((layout.numel, *shape[1:])))


def require_whole(what: str) -> None:
    """Raise when vectors are shards: `what` needs whole vectors."""
    if _ACTIVE.get() is not None:
        raise LandscapeError(
            f"{what} is not available on a sharded model (FSDP): it needs whole vectors on "
            "one rank. Use the default method, or measure an unsharded copy."
        )
