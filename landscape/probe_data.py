"""The probe's data: the user's batches, their device cache, and how they are batched.

`ProbeData` holds what the `Probe` passes over: the user's source (a `DataLoader`, a list of
batches or an `(inputs, targets)` pair), this rank's share of it when distributed, and a cache of
the batches on the model's device when they fit the memory budget. The helpers below move
batches to the device, unpack them and count their samples; nothing here computes a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import Comm, shard_source
from .errors import LandscapeError

DEFAULT_CPU_BUDGET = 2 * 2**30  # bytes for the data cache and for kept gradient graphs


class ProbeData:
    """The probe's data: the user's source, a device cache, and the first-use checks."""

    def __init__(self, data: Any, batch_size: int, device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, comm: Comm, pairs: bool = True):
        self.given: Iterable[Any] | None = as_reiterable(data, batch_size, pairs)  # None: a share
        self.source = shard_source(self.given, comm)
        self.device = device
        self.dtype = dtype
        self.cache_bytes = cache_bytes
        self.cache: list[Any] | None = None
        self.checked = False
        self.n_local = 0  # samples in this rank's share (all samples when not distributed)
        self.n_batches = 0  # batches in this rank's share
        self.chunks: list[Any] | None = None  # the cache merged for no-grad evaluation
        self.local_bytes = 0  # bytes of this rank's batches on the device

    def raw(self) -> Iterator[Any]:
        for batch in self.source:
            yield to_device(batch, self.device, self.dtype)

    def batches(self) -> Iterator[Any]:
        if self.cache is not None:
            yield from self.cache
        else:
            yield from self.raw()


def default_budget(device: torch.device) -> int:
    """Bytes for the data cache and kept graphs: 2 GiB on CPU, a quarter of free CUDA memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return DEFAULT_CPU_BUDGET


class TensorPairBatches:
    def __init__(self, inputs: Tensor, targets: Tensor, batch_size: int):
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for s in range(0, len(self.inputs), self.batch_size):
            yield self.inputs[s : s + self.batch_size], self.targets[s : s + self.batch_size]


def as_reiterable(data: Any, batch_size: int, pairs: bool = True) -> Iterable[Any]:
    """The data as a re-iterable of batches. An `(inputs, targets)` pair of equal-length tensors
    is split into batches; with `pairs=False` (a batch loss) only a tuple is taken as a pair."""
    pair_types = (tuple, list) if pairs else tuple
    if (isinstance(data, pair_types) and len(data) == 2 and isinstance(data[0], Tensor)
            and isinstance(data[1], Tensor) and data[0].ndim > 0 and data[1].ndim > 0
            and len(data[0]) == len(data[1])):
        return TensorPairBatches(data[0], data[1], batch_size)
    if isinstance(data, Tensor):
        raise LandscapeError(
            "data is a single tensor; pass an (inputs, targets) pair, a DataLoader, or a list "
            "of batches."
        )
    try:
        it = iter(data)
    except TypeError:
        raise LandscapeError(
            f"data of type {type(data).__name__} is not iterable; pass a DataLoader, a list of "
            "batches, or an (inputs, targets) pair of tensors."
        ) from None
    if it is data:
        raise LandscapeError(
            "data is a one-shot iterator (a generator?); the probe passes over the data many "
            "times. Pass a DataLoader or a list of batches."
        )
    return data


def map_tensors(obj: Any, fn: Any) -> Any:
    """`fn` applied to every tensor of a nested batch; dicts, lists and tuples keep their kind,
    anything else is returned as it is."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [map_tensors(v, fn) for v in obj]
        return tuple(out) if isinstance(obj, tuple) else out
    return obj


def to_device(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """The batch's tensors on `device`, floating-point ones in `dtype`."""
    return map_tensors(batch, lambda t: t.to(device=device, dtype=dtype)
                       if t.is_floating_point() else t.to(device=device))


def unpack(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    kind = type(batch).__name__
    hint = f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""
    raise LandscapeError(
        f"cannot unpack a batch of type {kind}{hint}: expected (inputs, targets). For dict "
        "batches or models that compute their own loss, pass "
        "batch_loss=lambda model, batch: ... (returning the mean loss) to the Probe."
    )


def call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            t = first_tensor(item)
            if t is not None:
                return t
    return None


def nbytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def slice_samples(obj: Any, index: Tensor, n: int) -> Any:
    """Index every tensor whose first dimension is the batch dimension (length n)."""
    return map_tensors(obj, lambda t: t[index.to(t.device)] if t.ndim > 0 and t.shape[0] == n
                       else t)


def gather_samples(batches: list[tuple[Any, int]], starts: list[int],
                    chosen: Tensor) -> list[Any]:
    """The batches restricted to the chosen global sample indices (sorted), batch by batch;
    `starts[i]` is the global index of the first sample of `batches[i]`."""
    out = []
    for (batch, n_b), start in zip(batches, starts):
        local = chosen[(chosen >= start) & (chosen < start + n_b)] - start
        if len(local):
            out.append(slice_samples(batch, local, n_b))
    return out


class _Unmergeable(Exception):
    """Batches whose structures cannot be concatenated along the sample dimension."""


def merge_batches(batches: list[Any], max_samples: int,
                  count: Callable[[Any], int]) -> list[Any] | None:
    """Consecutive batches concatenated along the sample dimension into chunks of at most
    `max_samples` samples (a larger batch stays alone), in order; None when their structures
    cannot be concatenated (different keys, trailing shapes or dtypes, 0-d tensors, differing
    non-tensor entries), in which case the caller keeps the batches as they are."""
    chunks: list[Any] = []
    group: list[Any] = []
    n = 0
    try:
        for batch in batches:
            n_b = count(batch)
            if group and n + n_b > max_samples:
                chunks.append(_concat(group))
                group, n = [], 0
            group.append(batch)
            n += n_b
        if group:
            chunks.append(_concat(group))
    except _Unmergeable:
        return None
    return chunks


def _concat(items: list[Any]) -> Any:
    first = items[0]
    if len(items) == 1:
        return first
    if isinstance(first, Tensor):
        same = all(isinstance(t, Tensor) and t.ndim > 0 and t.shape[1:] == first.shape[1:]
                   and t.dtype == first.dtype for t in items)
        if first.ndim == 0 or not same:
            raise _Unmergeable
        return torch.cat(items)
    if isinstance(first, dict):
        if not all(isinstance(d, dict) and d.keys() == first.keys() for d in items):
            raise _Unmergeable
        return {k: _concat([d[k] for d in items]) for k in first}
    if isinstance(first, (list, tuple)):
        if not all(type(b) is type(first) and len(b) == len(first) for b in items):
            raise _Unmergeable
        parts = [_concat(list(column)) for column in zip(*items)]
        return tuple(parts) if isinstance(first, tuple) else parts
    try:
        equal = all(item is first or bool(item == first) for item in items)
    except Exception:  # noqa: BLE001 - a comparison that does not give a truth value
        equal = False
    if not equal:
        raise _Unmergeable
    return first
