"""Accurate reductions over parameter-sized vectors: dot products and norms to float64 accuracy.

A float32 dot product or norm over tens of millions of elements (`torch.dot`, `@`,
`torch.linalg.vector_norm` on CPU: BLAS sums each SIMD lane sequentially) accumulates its
rounding errors: at 124M elements ||a|| is off by 1.3e-2 relative against float64
(`scripts/check_reductions.py`). Every norm and inner product over parameter-sized vectors in
this package goes through the helpers here instead. They work on `CHUNK` elements at a time (so
the extra memory is a few MB whatever the vector's size): within a chunk, float32 products
a_i b_i (one rounding each, relative 6e-8) are added by torch's `sum`, which sums pairwise
(cascade summation: error growing like log(chunk), not like the chunk's length); the chunks'
sums are added in float64. So

    sum_i a_i b_i  = the exact sum * (1 + about 1e-7), for terms of one sign,

about the inputs' own float32 rounding, and as fast as the BLAS dot. Several rows against one
vector at once (`rows_dot`, `sweep`) on the CPU take their float32 partial sums from a batched
matrix product over blocks of `BLOCK` (32) elements instead, summed in float64: each block a
32-term float32 sum (error bounded by 32 roundings, below the pairwise sum's ~21 at CHUNK
terms), and no product temporary, which made `rows_dot` twice as slow as a BLAS product. Other
dtypes (bfloat16,
float16) are upcast to float64 chunk by chunk; float64 inputs are reduced directly. On a device
without float64 (Apple MPS) the chunks are summed in float32 with Kahan compensation instead.

Over a sharded model's vectors (`landscape._vector_space`) each of these sums is this rank's
float64 partial sum, then all-reduced over the ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._vector_space import reduced

CHUNK = 2**21  # elements reduced at a time (an 8 MB float32 temporary)
BLOCK = 32  # elements per float32 partial sum of a rows-against-vector product on the CPU


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64, or float32 on a device that has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _chunked_sum(parts) -> Tensor:
    """Sum of the chunks' partial sums (0-d or same-shape tensors): in float64 as they are,
    Kahan-compensated when they are float32 (a device without float64)."""
    total, comp = None, None
    for part in parts:
        if total is None:
            total, comp = part.clone(), torch.zeros_like(part)
        elif part.dtype == torch.float64:
            total += part
        else:
            y = part - comp
            t = total + y
            comp = (t - total) - y
            total = t
    return total


def _partial(x: Tensor, y: Tensor, acc: torch.dtype) -> Tensor:
    """sum over the last axis of x * y for one chunk (x of shape (L,) or (r, L), y of shape
    (L,)): float32 products summed pairwise by torch, else upcast to `acc`; returned in acc."""
    if x.dtype == torch.float32 and y.dtype == torch.float32:
        if x.dim() == 2 and x.device.type == "cpu":
            return _block_dots(x, y, acc)
        return (x * y).sum(-1).to(acc)
    return x.to(acc) @ y.to(acc)


def _block_dots(x: Tensor, y: Tensor, acc: torch.dtype) -> Tensor:
    """x @ y for float32 x of shape (r, L) (rows of any stride, unit column stride) and y of
    shape (L,): float32 dot products of BLOCK elements (one batched matrix product over views,
    no copies), added in `acc`; the last L mod BLOCK columns in `acc`."""
    r, length = x.shape
    head = length - length % BLOCK
    blocks = x[:, :head].reshape(r, head // BLOCK, BLOCK).transpose(0, 1)  # (L/B, r, B)
    out = torch.bmm(blocks, y[:head].reshape(-1, BLOCK, 1)).sum((0, 2), dtype=acc)
    if head < length:
        out = out + x[:, head:].to(acc) @ y[head:].to(acc)
    return out


def dot(a: Tensor, b: Tensor) -> Tensor:
    """a . b over flat vectors of equal length, as a 0-d float64 tensor on their device."""
    acc = accumulation_dtype(a.device)
    if a.dtype == acc and b.dtype == acc or a.numel() <= CHUNK // 8:
        return reduced(a.to(acc) @ b.to(acc), a.numel())
    return reduced(_chunked_sum(_partial(a[i : i + CHUNK], b[i : i + CHUNK], acc)
                                for i in range(0, a.numel(), CHUNK)), a.numel())


def norm(a: Tensor) -> Tensor:
    """The Euclidean norm ||a|| of a flat vector, as a 0-d float64 tensor on its device."""
    return dot(a, a).sqrt()


def fdot(a: Tensor, b: Tensor) -> float:
    """`dot` as a Python float."""
    return float(dot(a, b))


def fnorm(a: Tensor) -> float:
    """`norm` as a Python float."""
    return float(norm(a))


def normalize_(a: Tensor) -> Tensor:
    """a /= ||a|| in place (the norm accumulated in float64); returns a."""
    return a.div_(norm(a).to(a.dtype))


def local_square_sum(a: Tensor) -> float:
    """sum_i a_i^2 over a tensor of any shape, on this process only (never reduced over
    ranks), accumulated as `dot` (float32 chunks summed pairwise, the chunks in float64)."""
    return _local_sum(a, lambda part, acc: _partial(part, part, acc))


def local_abs_sum(a: Tensor) -> float:
    """sum_i |a_i| over a tensor of any shape, on this process only, accumulated as `dot`."""
    return _local_sum(a, lambda part, acc: part.abs().sum().to(acc))


def _local_sum(a: Tensor, partial) -> float:
    """The float64 sum of `partial(chunk, accumulation dtype)` over a's CHUNK-element chunks
    (chunks of a dtype other than float32 upcast to float64 first)."""
    flat = a.detach().reshape(-1)
    acc = accumulation_dtype(flat.device)
    parts = [partial(part if part.dtype == torch.float32 else part.to(acc), acc)
             for part in flat.split(CHUNK)]
    return float(_chunked_sum(parts)) if parts else 0.0


def rows_dot(rows: Tensor, w: Tensor) -> Tensor:
    """rows @ w for rows of shape (r, n) and w of shape (n,): shape (r,), float64, summed over
    column chunks of about CHUNK / r columns (so the temporary stays about CHUNK elements)."""
    acc = accumulation_dtype(w.device)
    r, n = rows.shape
    step = max(1, CHUNK // max(r, 1))
    if rows.dtype == acc and w.dtype == acc:
        out = rows @ w
    elif n <= step:
        out = rows.to(acc) @ w.to(acc)
    else:
        out = _chunked_sum(_partial(rows[:, i : i + step], w[i : i + step], acc)
                           for i in range(0, n, step))
    return reduced(out, n)


def sweep(blocks: list[Tensor], w: Tensor, subtract: Tensor | None = None, dots: bool = True,
          square: bool = False) -> tuple[Tensor | None, Tensor | None]:
    """One pass over the columns of row blocks R = [blocks] (each (r_i, n)) and w (n,): first
    w -= R^T `subtract` in place (when given), then (R @ w, ||w||^2) as float64 (None for what
    is not asked: `dots`, `square`), accumulated as `rows_dot` and `norm`. Chunk by chunk of
    about CHUNK / rows columns, so each chunk of w is updated and reduced while it is in the
    cache: classical Gram-Schmidt twice (`Basis.orthogonalize`) reads the rows three times,
    not four, and its remainder's norm comes with the last pass."""
    acc = accumulation_dtype(w.device)
    rows = sum(len(b) for b in blocks)
    n = w.numel()
    step = max(BLOCK, (CHUNK // max(rows, 1)) // BLOCK * BLOCK)
    coeffs = None if subtract is None else subtract.to(w.dtype)
    parts = []
    for c0 in range(0, n, step):
        part = w[c0 : c0 + step]
        start = 0
        for block in blocks:
            if coeffs is not None and len(block):
                part.addmv_(block[:, c0 : c0 + step].T, coeffs[start : start + len(block)],
                            alpha=-1)
            start += len(block)
        pieces = [_partial(b[:, c0 : c0 + step], part, acc) for b in blocks if dots and len(b)]
        if square:
            pieces.append(_partial(part, part, acc).reshape(1))
        parts.append(torch.cat(pieces) if pieces else part.new_zeros(0, dtype=acc))
    total = _chunked_sum(parts) if parts else w.new_zeros(rows * dots + square, dtype=acc)
    total = reduced(total, n)
    out_dots = total[:rows] if dots else None
    return out_dots, (total[-1] if square else None)


def gram(a: Tensor, b: Tensor) -> Tensor:
    """a^T @ b for column blocks a (n, p) and b (n, q): shape (p, q), float64, summed over row
    chunks of about CHUNK / (p + q) rows."""
    acc = accumulation_dtype(a.device)
    n = a.shape[0]
    if a.dtype == acc and b.dtype == acc:
        return reduced(a.T @ b, n)
    step = max(1, CHUNK // max(a.shape[1] + b.shape[1], 1))
    return reduced(_chunked_sum(a[i : i + step].to(acc).T @ b[i : i + step].to(acc)
                                for i in range(0, n, step)), n)
