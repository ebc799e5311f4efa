"""Data-parallel probes with `torch.distributed`: which batches a rank takes, and the reductions.

When the user's script has called `torch.distributed.init_process_group` (every `torchrun` script
does), a `Probe` shards its batches across the ranks and all-reduces (SUM) the sums it adds up
(loss sums, sample counts, correct counts, gradient, Hessian- and Gauss-Newton-vector products),
then divides once, so every rank returns what one process would return on all the data, up to
floating-point summation order.

Sharding: rank r of a world of W takes the batches i of the loader with i % W == r. A plain
`DataLoader` over a map-style dataset is rebuilt around a sharded batch sampler, so a rank only
loads its own batches (a shuffling `RandomSampler` is replaced by the sequential order: the mean
over all samples does not depend on it, and every rank must see the same batch sequence). A
loader whose sampler is a `DistributedSampler` is already split: every rank keeps its batches.

Failures: every reduction carries a failure flag. When one rank raises, every rank raises (the
failing one its own error, the others a `LandscapeError` naming the rank and its message), so no
rank is left waiting in a collective.

Contract: every rank calls the same probe methods in the same order with the same arguments (as
in any data-parallel program); random vectors are drawn from the same seed on every rank.
"""

from __future__ import annotations

import inspect
import itertools
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import LandscapeError

DISTRIBUTED_OPTIONS = ("auto", True, False)
SHARD_OPTIONS = ("auto", "points", "data")


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Comm:
    """The probe's process group: rank, world size and the SUM reductions (identity when alone).

    Attributes:
        rank: this process's rank in the group (0 when not distributed).
        world_size: number of ranks (1 when not distributed).
        group: the `ProcessGroup` (None: the default group, or not distributed).
        active: True when reductions go through `torch.distributed`.
        device: where reduction buffers live (the probe's device; CUDA for NCCL).
    """

    def __init__(self, active: bool, group: Any, device: torch.device):
        self.active = active
        self.group = group
        self.device = device
        if active:
            self.rank = torch.distributed.get_rank(group)
            self.world_size = torch.distributed.get_world_size(group)
        else:
            self.rank, self.world_size = 0, 1

    def reduce(self, scalars: Sequence[float] = (), tensors: Sequence[Tensor] = (),
               error: BaseException | None = None) -> list[float]:
        """Sum `scalars` (float64) and `tensors` (in place) over the ranks; raise on every rank
        when any rank passes an `error`.

        Returns:
            The summed scalars as Python floats (the inputs themselves when not distributed).
        """
        if not self.active:
            if error is not None:
                raise error
            return [float(s) for s in scalars]
        flags = torch.tensor([float(s) for s in scalars] + [0.0 if error is None else 1.0],
                             dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(flags, group=self.group)
        if flags[-1].item() > 0:
            self._raise_everywhere(error)
        for t in tensors:
            torch.distributed.all_reduce(t, group=self.group)
        return flags[:-1].tolist()

    def _raise_everywhere(self, error: BaseException | None) -> None:
        mine = None if error is None else (type(error).__name__, str(error))
        everyone: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(everyone, mine, group=self.group)
        if error is not None:
            raise error
        rank, (kind, message) = next((r, m) for r, m in enumerate(everyone) if m is not None)
        raise LandscapeError(f"rank {rank} of {self.world_size} failed ({kind}): {message}")

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable; `obj` itself when not distributed)."""
        if not self.active:
            return obj
        box = [obj]
        src = torch.distributed.get_global_rank(self.group, 0) if self.group is not None else 0
        device = self.device if self.device.type == "cuda" else None
        torch.distributed.broadcast_object_list(box, src=src, group=self.group, device=device)
        return box[0]

    def gather_rows(self, rows: Tensor) -> Tensor:
        """All ranks' `rows` (same shape everywhere) stacked by rank: (world_size * k, m)."""
        if not self.active:
            return rows
        rows = rows.to(self.device).contiguous()
        parts = [torch.empty_like(rows) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, rows, group=self.group)
        return torch.cat(parts).cpu()

    def raise_if_any(self, failed: bool, error: BaseException | None) -> None:
        """Collective: raise on every rank when `failed` on any (call after a gather that
        carried the flag, so no extra reduction is spent when nothing failed)."""
        if failed:
            self._raise_everywhere(error)

    def global_starts(self, sizes: Sequence[int]) -> tuple[list[int], int]:
        """Global index of the first sample of each of this rank's batches, and the global total.

        The global order is the loader's: this rank's j-th batch is global batch j * W + rank
        (the sharding rule i % W == rank), so a single process numbers the samples the same way.
        """
        if not self.active:
            starts = list(itertools.accumulate(sizes, initial=0))
            return starts[:-1], starts[-1]
        counts = [0.0] * self.world_size
        counts[self.rank] = float(len(sizes))
        counts = self.reduce(counts)
        per_rank = int(max(counts))
        slots = [0.0] * (per_rank * self.world_size)
        for j, n in enumerate(sizes):
            slots[j * self.world_size + self.rank] = float(n)
        slots = [int(s) for s in self.reduce(slots)]
        offsets = list(itertools.accumulate(slots, initial=0))
        return [offsets[j * self.world_size + self.rank] for j in range(len(sizes))], offsets[-1]


def resolve_comm(distributed: Any, device: torch.device) -> Comm:
    """The `Comm` for a probe's `distributed=` option ("auto", True, False or a ProcessGroup)."""
    group = None
    if isinstance(distributed, bool) or distributed == "auto":
        want = distributed
    elif _dist_ready() and isinstance(distributed, torch.distributed.ProcessGroup):
        want, group = True, distributed
    else:
        raise LandscapeError(
            f"distributed must be one of {DISTRIBUTED_OPTIONS} or a torch.distributed "
            f"ProcessGroup; got {distributed!r}."
        )
    if want is True and not _dist_ready():
        raise LandscapeError(
            "distributed=True but torch.distributed is not initialized; call "
            "torch.distributed.init_process_group(...) first (torchrun sets up the environment), "
            "or leave distributed='auto'."
        )
    active = bool(want) and _dist_ready()
    if active:
        backend = str(torch.distributed.get_backend(group))
        if backend == "nccl" and device.type != "cuda":
            raise LandscapeError(
                f"the process group uses NCCL but the model is on {device}; move the model to "
                "its rank's GPU (model.to(f'cuda:{local_rank}')) or use the gloo backend on CPU."
            )
    return Comm(active, group, device)


class _Sharded:
    """Every `world_size`-th item of a re-iterable, starting at `rank` (with a length if known)."""

    def __init__(self, items: Iterable[Any], rank: int, world_size: int):
        self.items, self.rank, self.world_size = items, rank, world_size

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.items), self.rank, None, self.world_size)

    def __len__(self) -> int:
        n = len(self.items)  # type: ignore[arg-type]
        return max(0, (n - self.rank + self.world_size - 1) // self.world_size)


def shard_source(source: Iterable[Any], comm: Comm) -> Iterable[Any]:
    """This rank's share of the batches of `source` (the source itself when alone)."""
    if not comm.active:
        return source
    return _shard(source, comm.rank, comm.world_size)


def full_source(source: Iterable[Any], comm: Comm) -> Iterable[Any] | None:
    """All batches of `source` in the single-process order, for a rank that evaluates on all the
    data (surface points sharding); None when this rank cannot see all of it (a loader with a
    `DistributedSampler` holds only the rank's share)."""
    if not comm.active:
        return source
    from torch.utils.data import DataLoader, DistributedSampler

    if isinstance(source, DataLoader) and any(
        isinstance(s, DistributedSampler)
        for s in (source.sampler, getattr(source.batch_sampler, "sampler", None))
    ):
        return None
    return _shard(source, 0, 1)


def _shard(source: Iterable[Any], rank: int, world_size: int) -> Iterable[Any]:
    """Batches i of `source` with i % world_size == rank, in the loader's unshuffled order."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    if not isinstance(source, DataLoader):
        return _Sharded(source, rank, world_size)
    batch_sampler = source.batch_sampler
    samplers = [source.sampler, getattr(batch_sampler, "sampler", None)]
    if any(isinstance(s, DistributedSampler) for s in samplers):
        sampler = next(s for s in samplers if isinstance(s, DistributedSampler))
        n = len(sampler.dataset)  # type: ignore[arg-type]
        extra = n % sampler.num_replicas
        if extra:
            changed = extra if sampler.drop_last else sampler.num_replicas - extra
            warnings.warn(
                f"the DistributedSampler splits {n} samples over {sampler.num_replicas} ranks "
                f"and {'drops' if sampler.drop_last else 'repeats'} {changed} to make the shares "
                "equal, so the probe's data is not exactly the data set; pass the plain loader "
                "(the probe shards it) for exact values.",
                stacklevel=5,
            )
        return source
    shuffled = isinstance(source.sampler, RandomSampler)
    if type(source) is not DataLoader or batch_sampler is None:
        if shuffled:
            raise LandscapeError(
                "a shuffling loader gives every rank a different batch order, so the ranks' "
                "shares would overlap; pass shuffle=False (the mean loss does not depend on the "
                "order) or a DistributedSampler."
            )
        return _Sharded(source, rank, world_size)
    if shuffled:
        from torch.utils.data import BatchSampler, SequentialSampler

        batch_sampler = BatchSampler(SequentialSampler(source.dataset), source.batch_size,
                                     source.drop_last)  # type: ignore[arg-type]
    return _rebuild_loader(source, _Sharded(batch_sampler, rank, world_size))


def _rebuild_loader(loader: Any, batch_sampler: Any) -> Any:
    """The same `DataLoader` (workers, collate, pinning) over another batch sampler."""
    from torch.utils.data import DataLoader

    kwargs = dict(
        batch_sampler=batch_sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    accepted = inspect.signature(DataLoader.__init__).parameters
    for name in ("pin_memory_device", "in_order"):
        if name in accepted and hasattr(loader, name):
            kwargs[name] = getattr(loader, name)
    return DataLoader(loader.dataset, **kwargs)
