"""Stored Krylov bases whose memory is counted in parameter-sized vectors.

A `Basis` keeps orthonormal vectors as rows of blocks that are allocated as the basis grows
(nothing is filled up front), never holds more rows than its capacity, and does the
Gram-Schmidt and restart arithmetic in place, so the memory of an estimator is its capacity in
vectors plus small matrices (k x k, or capacity x `_COLUMN_BLOCK` during a restart).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._random import rademacher
from .._reduce import accumulation_dtype, norm, rows_dot, sweep

_BLOCK_ROWS = 8  # rows allocated at a time
# columns transformed at a time in a restart: a capacity x 256k temporary (8 MB for 8 float32
# rows, a small part of a vector at size; 1M columns took 0.8 vectors of a 14.5M-parameter LSTM)
_COLUMN_BLOCK = 2**18
DEFAULT_BYTES = 2**30  # the stored vectors of a curvature estimator fit in this by default
LARGE_MODEL_VECTORS = 8  # the default budget, in vectors, when the default above does not fit
# 8, not more: on ConvNeXt-T a basis of 10 took the same products as 8 (docs/benchmarks/scale.md)
# Gram-Schmidt projects a second time unless the first left this fraction of the norm (DGKS)
REORTHOGONALIZE = 0.717
TOTAL_VECTORS = 12  # and with what the product holds (`landscape.hvp_memory`), at most this


def vector_bytes(n: int, dtype: torch.dtype) -> int:
    """Bytes of one parameter-sized vector."""
    return n * torch.finfo(dtype).bits // 8


def default_budget(n: int, dtype: torch.dtype, wanted: int, held: float = 0.0) -> int:
    """Vectors an estimator may store when the caller sets no budget: `wanted` when they fit in
    1 GiB (small models: the best-converging choice), else 8, or fewer where the product holds
    `held` vectors beyond a gradient's peak (its kept graph, its work vectors, the free heap
    pages resident memory may hold beside them: `landscape.hvp_memory.heap_slack`): at most
    TOTAL_VECTORS - held, so the call's peak memory beyond a plain gradient's stays within
    TOTAL_VECTORS (12) vectors (at least 2)."""
    if wanted * vector_bytes(n, dtype) <= DEFAULT_BYTES:
        return wanted
    return max(2, min(wanted, LARGE_MODEL_VECTORS, int(TOTAL_VECTORS - max(held, 0.0))))


class Basis:
    """Up to `capacity` vectors of length n, stored as rows; `rows[i]` set by `set(i, x)`."""

    def __init__(self, n: int, capacity: int, device: torch.device, dtype: torch.dtype,
                 pin: bool = False):
        self.n, self.capacity, self.device, self.dtype = n, capacity, device, dtype
        self.pin = pin  # host rows in pinned memory (fast copies to and from CUDA)
        self._blocks: list[Tensor] = []

    @property
    def allocated(self) -> int:
        """Rows allocated so far (the memory in use, in vectors)."""
        return sum(len(b) for b in self._blocks)

    def row(self, i: int) -> Tensor:
        block, r = divmod(i, _BLOCK_ROWS)
        return self._blocks[block][r]

    def slot(self, i: int) -> Tensor:
        """rows[i] (contents undefined until written), allocating a block of rows when i is
        past the allocated ones: a product can be written straight into it."""
        if i >= self.capacity:
            raise IndexError(f"basis row {i} beyond its capacity {self.capacity}")
        while i >= self.allocated:
            rows = min(_BLOCK_ROWS, self.capacity - self.allocated)
            self._blocks.append(torch.empty(rows, self.n, device=self.device, dtype=self.dtype,
                                            pin_memory=self.pin))
        return self.row(i)

    def set(self, i: int, x: Tensor) -> None:
        """rows[i] = x (no copy when x is rows[i] itself, e.g. written through `slot`)."""
        row = self.slot(i)
        if x.data_ptr() != row.data_ptr():
            row.copy_(x)

    def _spans(self, size: int):
        """(block, first row index, rows used) covering rows[:size]."""
        start = 0
        for block in self._blocks:
            if start >= size:
                return
            used = min(len(block), size - start)
            yield block[:used], start, used
            start += used

    def dots(self, w: Tensor, size: int) -> Tensor:
        """rows[:size] @ w, shape (size,), accumulated in float64 (`landscape._reduce`)."""
        parts = [rows_dot(block, w) for block, _, _ in self._spans(size)]
        return torch.cat(parts) if parts else w.new_zeros(0, dtype=accumulation_dtype(w.device))

    def subtract(self, w: Tensor, coeffs: Tensor, size: int) -> None:
        """w -= coeffs @ rows[:size], in place (coeffs of any float dtype)."""
        for block, start, used in self._spans(size):
            w.addmv_(block.T, coeffs[start : start + used].to(w.dtype), alpha=-1)

    def orthogonalize(self, w: Tensor, size: int) -> Tensor:
        """Classical Gram-Schmidt against rows[:size], twice where the first pass cancels most of
        w (`orthogonalize_norm`), in place; returns the coefficients (float64: the inner
        products are accumulated in float64)."""
        return self.orthogonalize_norm(w, size)[0]

    def orthogonalize_norm(self, w: Tensor, size: int) -> tuple[Tensor, Tensor]:
        """`orthogonalize`, and the norm of what is left of w (0-d, float64), in passes over the
        rows (`landscape._reduce.sweep`): h = V w and ||w||^2; then, when the first projection
        leaves ||w||^2 - ||h||^2 >= REORTHOGONALIZE^2 ||w||^2 (little cancellation, the
        criterion of Daniel, Gragg, Kaufman and Stewart 1976, ARPACK's 0.717), w -= V^T h and
        ||w||^2: one pass is enough; else w -= V^T h and h2 = V w, chunk by chunk, then
        w -= V^T h2 and ||w||^2 (the second pass). Returns (h + h2, ||w||)."""
        blocks = [block for block, _, _ in self._spans(size)]
        h, squares = sweep(blocks, w, square=True)
        if float(squares) - float(h @ h) >= REORTHOGONALIZE**2 * float(squares):
            _, left = sweep(blocks, w, subtract=h, dots=False, square=True)
            return h, left.sqrt()
        h2, _ = sweep(blocks, w, subtract=h)
        _, left = sweep(blocks, w, subtract=h2, dots=False, square=True)
        return h + h2, left.sqrt()

    def combine(self, coeffs: Tensor) -> Tensor:
        """coeffs @ rows[:size] as a new (k, n) tensor, coeffs of shape (k, size)."""
        out = torch.zeros(coeffs.shape[0], self.n, device=self.device, dtype=self.dtype)
        for block, start, used in self._spans(coeffs.shape[1]):
            out.addmm_(coeffs[:, start : start + used], block)
        return out

    def transform_in_place(self, coeffs: Tensor) -> None:
        """rows[:p] = coeffs.T @ rows[:size] for coeffs of shape (size, p), p <= size, column
        block by column block, so the only temporary is p x `_COLUMN_BLOCK` (and a copy of the
        old rows' columns, size x `_COLUMN_BLOCK`, when they lie in several blocks)."""
        size, p = coeffs.shape
        spans = list(self._spans(size))
        for c0 in range(0, self.n, _COLUMN_BLOCK):
            c1 = min(c0 + _COLUMN_BLOCK, self.n)
            if len(spans) == 1:  # rows in one block: read in place (a strided view), no copy
                old = spans[0][0][:, c0:c1]
            else:
                old = torch.cat([block[:, c0:c1] for block, _, _ in spans])
            new = coeffs.T @ old
            for block, start, used in self._spans(p):
                block[:, c0:c1].copy_(new[start : start + used])
            del new, old  # freed before the next block's are made


def range_basis(matvec: Callable[[Tensor], Tensor], n: int, s: int, gen: torch.Generator,
                device: torch.device, dtype: torch.dtype) -> tuple[Basis, int]:
    """An orthonormal basis Q of the range of H S, S = s Rademacher vectors (Hutch++'s sketch),
    built by Gram-Schmidt as the products arrive (s products, s stored vectors; H S
    directions that are numerically dependent are skipped). Returns (Q, its rank)."""
    Q = Basis(n, s, device, dtype)
    rank = 0
    for _ in range(s):
        y = matvec(rademacher((n,), gen, device, dtype))
        norm0 = norm(y)
        Q.orthogonalize(y, rank)
        remainder = norm(y)
        if remainder > 1e3 * torch.finfo(y.dtype).eps * norm0:  # else H S is rank deficient
            Q.set(rank, y.div_(remainder))
            rank += 1
        del y
    return Q, rank
