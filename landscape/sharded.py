"""Probes over models sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`), measured sharded.

`Probe(model, data)` over an FSDP2 model builds a `ShardedProbe`. Its parameters stay sharded and
so does every flat vector: rank r's vectors hold only its own elements, the local shard of each
probed parameter (`DTensor.to_local()`, rows of dimension 0) in parameter order, so a vector costs
each rank N / W entries for N parameters over W ranks. `probe.num_params` is that local length;
`probe.layout` (`landscape._vector_space.Layout`) says where the elements sit in the full vector
of `probe.layout.numel` entries (the single-process order).

* Products: double backward through FSDP2 is unavailable (the sharded parameters are not in the
  graph the forward builds), so every Hessian-vector product is the finite difference of two
  gradients (`landscape.hvp_fd`): each rank moves its own shards to w +- eps v in place, the
  forward all-gathers them, and w is restored bitwise. The step's norms and scales are summed
  over the ranks, so every rank takes the same eps, the one of one process.
* Gradients: `(n_b * loss).backward()` with the model's `.grad` set aside and put back
  (`hvp_fd.grads_kept`); FSDP2's reduce-scatter sums the ranks' gradients (after dividing them by
  W, which is undone here), so each rank gets its shard of sum over all ranks' batches of n_b g_b,
  and the probe's tensor sums are not all-reduced again (`ShardedComm`); scalar sums (losses,
  sample counts) are.
* Inner products, norms and random vectors: the estimators that support sharded vectors
  (`hessian_eigenvalues`, `hessian_trace`, `hessian_density`, `first_order_flatness`,
  `sharpness` without `m`) run inside `probe.vectors()`, where `landscape._reduce` all-reduces
  its float64 partial sums and
  `landscape._random` draws the full vector from the seed and keeps this rank's elements
  (`landscape._vector_space`). So the ranks together hold exactly the vectors of one process, and
  the results equal one process's on the unsharded model up to summation order (1e-12 relative
  in float64; the test asks 1e-6).

Contract: every rank calls the same methods in the same order (FSDP2's forward and backward are
collectives), and every rank has the same number of batches (checked when the probe is built,
by one pass over the loader without the model). Methods that return vectors (`hvp`, `gradient`,
a loss at w + delta) must run inside `probe.vectors()` (the estimators above enter it), so an
estimator that would take local inner products for global ones raises instead of measuring
wrong. Not available on a sharded model: `params=`/`by=` subsets after construction, Gauss-Newton
products, sample subsets (m-sharpness), surfaces, `dtype=`, exact products (`hvp_method` other
than "auto" or "finite_difference"), XTrace and the exact trace. A result's `delta` (sharpness,
flatness) is this rank's shard of it. FSDP2 sharding over a 1-D mesh of all the
probe's ranks with `Shard(0)` placements (the default) is supported; other meshes and placements
are refused. A custom gradient divide factor (`set_gradient_divide_factor`) or
`set_requires_gradient_sync(False)` would change the gradients: leave them at their defaults.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._vector_space import Layout, active, using
from .distributed import Comm
from .errors import LandscapeError
from .hvp_choice import FINITE_DIFFERENCE
from .hvp_fd import grads_kept
from .probe import Probe
from .wrapped import is_dtensor

_OUTSIDE = (
    "a sharded (FSDP2) probe's vectors are each rank's shards, so this needs landscape's "
    "reductions over the ranks: use hessian_eigenvalues, hessian_trace, hessian_density, "
    "first_order_flatness or sharpness, or call it inside `with probe.vectors():`"
)


class ShardedComm(Comm):
    """The probe's `Comm` over sharded parameters: scalar sums are all-reduced as usual, tensor
    sums are not (they are gradients that FSDP2's reduce-scatter already summed over the ranks,
    and each rank holds a different shard)."""

    def __init__(self, comm: Comm):
        super().__init__(comm.active, comm.group, comm.device)

    def reduce(self, scalars: Sequence[float] = (), tensors: Sequence[Tensor] = (),
               error: BaseException | None = None) -> list[float]:
        return super().reduce(scalars, (), error)


class ShardedGradients:
    """Per-batch gradients through FSDP2's backward: this rank's shard of the gradient summed
    over the ranks, divided by this rank's batch size (so that the caller's n_b-weighted sums are
    the sums over all ranks' batches)."""

    def __init__(self, passes: Any, sharded: list[nn.Parameter], world_size: int):
        self.passes, self.sharded, self.world_size = passes, sharded, world_size
        self.everything = [q for q in passes.model.parameters() if is_dtensor(q)]

    def batch(self, batch: Any) -> tuple[Tensor, int, list[Tensor | None]]:
        p = self.passes
        for q, local in zip(self.sharded, p.params):
            if _local(q).data_ptr() != local.data_ptr():
                raise LandscapeError(
                    "the sharded parameters were reallocated since the probe was built (a "
                    "load_state_dict or module._apply?); build the probe again.")
        loss, n_b, _ = p.compute(batch)
        # the sharded parameters themselves: after a forward, FSDP2 leaves a module's
        # unsharded parameters in its attributes (the root's), so model.parameters() may not
        # hold the DTensors whose .grad the backward fills
        with grads_kept(p.model, self.everything):
            (loss * n_b).backward()
            grads = [None if q.grad is None else _local(q.grad) for q in self.sharded]
        if all(g is None for g in grads):
            raise LandscapeError(
                "FSDP2's backward left no gradient in the sharded parameters; keep "
                "set_requires_gradient_sync(True) (the default) while measuring.")
        scale = self.world_size / max(n_b, 1)  # FSDP2 averages over the ranks: undo it
        return loss.detach(), n_b, [None if g is None else g * scale for g in grads]


class ShardedProbe(Probe):
    """A `Probe` over an FSDP2 model whose vectors stay sharded like its parameters.

    Built by `Probe(model, data, ...)` when the model is sharded with `fully_shard`; it takes
    the same arguments (see the module for what is not available). Every rank must build it and
    call the same methods in the same order.

    Attributes:
        layout: where this rank's `num_params` elements sit in the full flat vector of
            `layout.numel` entries.
    """

    def __init__(self, model: nn.Module, data: Any, loss_fn: Any = None, *,
                 hvp_method: str = "auto", dtype: torch.dtype | None = None,
                 distributed: Any = "auto", check_hvp: bool = True, rebatch: bool = True,
                 **kwargs: Any):
        del check_hvp, rebatch  # products are finite differences; batches are the user's
        if hvp_method not in ("auto", FINITE_DIFFERENCE):
            raise LandscapeError(
                f"hvp_method={hvp_method!r} needs double backward, which FSDP2's sharded "
                "parameters do not support; use hvp_method='auto' or 'finite_difference' "
                "(central differences of gradients, 2 gradients a product).")
        if dtype is not None or distributed is False:
            raise LandscapeError(
                "a model sharded with FSDP2 is measured in its own dtype, over its process "
                "group: leave dtype=None and distributed='auto'.")
        self._sharded: list[nn.Parameter] = []
        super().__init__(model, data, loss_fn, hvp_method=FINITE_DIFFERENCE, dtype=None,
                         distributed=distributed, check_hvp=False, rebatch=False, **kwargs)
        comm = self.batch_pass.comm
        mesh = self._sharded[0].device_mesh
        if not comm.active or mesh.size() != comm.world_size:
            raise LandscapeError(
                f"the model is sharded over a mesh of {mesh.size()} ranks but the probe's "
                f"process group has {comm.world_size}; shard it over all the ranks "
                "(init_device_mesh(device, (world_size,))).")
        self.layout = _layout(self._sharded, [p.numel() for p in self.params], mesh)
        self.batch_pass.comm = ShardedComm(comm)
        self.batch_pass.compute = _resharding(self.batch_pass.compute, self.model)
        self.products.fd.sharded = True
        self.products.fd.gradients = ShardedGradients(self.batch_pass, self._sharded,
                                                      comm.world_size)
        _check_batch_counts(self.batch_pass.data.source, comm)

    def _measured(self, named: list[tuple[str, nn.Parameter]]) -> list[nn.Parameter]:
        for name, p in named:
            mesh = getattr(p, "device_mesh", None)
            placements = tuple(getattr(p, "placements", ()))
            if not is_dtensor(p) or mesh is None or mesh.ndim != 1 \
                    or [type(x).__name__ for x in placements] != ["Shard"] \
                    or placements[0].dim != 0:
                raise LandscapeError(
                    f"parameter {name!r} is not sharded by fully_shard over a 1-D mesh with "
                    f"Shard(0) (it is {type(p).__name__} with placements {placements}); "
                    "apply fully_shard to the root module too, over init_device_mesh(device, "
                    "(world_size,)), with the default placement.")
        self._sharded = [p for _, p in named]
        return [_local(p) for p in self._sharded]

    def vectors(self) -> contextlib.AbstractContextManager:
        """Inside it, landscape's inner products and random draws over this probe's vectors
        are summed and drawn over the ranks (`landscape._vector_space`)."""
        return using(self.layout)

    # ------------------------------------------------------------------ guarded entry points

    def _inside(self, what: str) -> None:
        if active() is not self.layout:
            raise LandscapeError(f"{what}: {_OUTSIDE}.")

    def hvp(self, v: Tensor, delta: Tensor | None = None, *, out: Tensor | None = None
            ) -> Tensor:
        self._inside("probe.hvp")
        return super().hvp(v, delta, out=out)

    def loss_and_gradient(self, delta: Tensor | None = None) -> tuple[float, Tensor]:
        self._inside("probe.gradient")
        return super().loss_and_gradient(delta)

    def gradient_and_hvp(self, v: Tensor | None = None, delta: Tensor | None = None
                         ) -> tuple[float, Tensor, Tensor]:
        self._inside("probe.gradient_and_hvp")
        return super().gradient_and_hvp(v, delta)

    def evaluate(self, delta: Tensor | None = None) -> Any:
        if delta is not None:
            self._inside("a loss at w + delta")
        return super().evaluate(delta)

    def ggn_vp(self, v: Tensor, delta: Tensor | None = None) -> Tensor:
        raise _unavailable("Gauss-Newton products (curvature='ggn')")

    def evaluate_points(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        raise _unavailable("loss surfaces and lines (evaluate_points)")

    def hessian_operator(self, curvature: str = "hessian") -> Any:
        raise _unavailable("hessian_operator (it works on whole vectors)")

    def _clone(self, **overrides: Any) -> Probe:
        raise _unavailable("sub-probes (params=/by= of an estimator, subset, sample_groups)")

    def alone(self) -> Probe | None:
        raise _unavailable("one rank measuring alone")


def _resharding(compute: Any, model: nn.Module) -> Any:
    """`compute` (one batch's forward) with every FSDP2 module resharded first, so that the
    forward all-gathers the shards as they are now: a module left unsharded by an earlier
    forward (the root keeps its parameters gathered after a forward) would otherwise compute
    with the gathered copy of the shards before they were moved."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]

    def resharded_compute(batch: Any) -> Any:
        for m in modules:
            m.reshard()
        return compute(batch)

    return resharded_compute


def _unavailable(what: str) -> LandscapeError:
    return LandscapeError(
        f"{what} is not available on a model sharded with FSDP2; select parameters with "
        "Probe(model, data, params=...) when building the probe, or measure an unsharded copy.")


def _local(p: Tensor) -> Tensor:
    """The local shard of a DTensor (the same storage, no graph)."""
    with torch.no_grad():
        return p.to_local()


def _layout(sharded: list[nn.Parameter], local_sizes: list[int], mesh: Any) -> Layout:
    """Where this rank's shards sit in the full flat vector: each parameter's rows of
    dimension 0 are split over the mesh's ranks in rank order (the local row counts are
    all-gathered, so uneven and empty shards are placed right)."""
    group = mesh.get_group()
    rows = torch.tensor([_local(p).shape[0] if p.ndim else 1 for p in sharded],
                        dtype=torch.int64)
    everyone = [torch.empty_like(rows) for _ in range(mesh.size())]
    torch.distributed.all_gather(everyone, rows, group=group)
    me = mesh.get_local_rank()
    pieces, start = [], 0
    for i, p in enumerate(sharded):
        total = sum(int(r[i]) for r in everyone)
        if p.ndim == 0 or total != p.shape[0]:
            raise LandscapeError(
                f"parameter {i} ({tuple(p.shape)}) is not split into rows over the ranks "
                f"(the ranks hold {[int(r[i]) for r in everyone]} rows); shard with the "
                "default Shard(0) placement.")
        row = math.prod(p.shape[1:])
        first = start + sum(int(r[i]) for r in everyone[:me]) * row
        if local_sizes[i]:
            pieces.append((first, first + local_sizes[i]))
        start += p.numel()

    def all_sum(t: Tensor) -> Tensor:
        torch.distributed.all_reduce(t, group=group)
        return t

    return Layout(start, tuple(pieces), all_sum)


def _check_batch_counts(source: Any, comm: Comm) -> None:
    """Raise on every rank unless all ranks have the same number of batches (FSDP2's forward
    and backward are collectives, so the ranks must pass over their batches in step)."""
    counts = [0.0] * comm.world_size
    counts[comm.rank] = float(sum(1 for _ in source))
    counts = comm.reduce(counts)
    if len(set(counts)) > 1:
        raise LandscapeError(
            f"the ranks hold different numbers of batches ({[int(c) for c in counts]}); a "
            "model sharded with FSDP2 runs its forward and backward passes in step on every "
            "rank, so give each rank as many batches (a number of batches divisible by the "
            "world size, or a DistributedSampler with drop_last=True).")
